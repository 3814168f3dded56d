//! What a server does with the connections it accepts.

use std::future::Future;

use tokio::net::{TcpListener, TcpStream};

/// Binds a listener on 127.0.0.1, connects to it once and hands it to `accept_one`, the server's own
/// way of accepting, then asserts that the accepted socket has Nagle's algorithm off: an answer
/// written in pieces (a gRPC stream's frames, say) must not wait for the client's delayed ACK,
/// about 40 ms.
///
/// # Panics
/// When the socket has Nagle's algorithm on, or the listener cannot be bound or reached.
pub async fn assert_accepts_without_nagle<F, Fut>(accept_one: F)
where
    F: FnOnce(TcpListener) -> Fut,
    Fut: Future<Output = TcpStream>,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    // Connected as soon as the kernel queued it: the accept may come after.
    let _client = TcpStream::connect(addr).await.expect("connect");
    let server_side = accept_one(listener).await;
    assert!(
        server_side.nodelay().expect("TCP_NODELAY readable"),
        "Nagle's algorithm is on: an answer written in pieces waits for the client's delayed ACK"
    );
}
