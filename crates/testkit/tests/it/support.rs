use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

/// Whether something accepts TCP connections on 127.0.0.1:`port`.
pub fn port_accepts(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
}

#[test]
fn free_port_gives_a_port_nobody_listens_on() {
    let port = testkit::free_port();
    assert_ne!(port, 0);
    assert!(!port_accepts(port));
}

#[test]
fn init_tracing_can_be_called_twice() {
    testkit::init_tracing();
    testkit::init_tracing();
    tracing::info!("tracing works");
}
