use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

/// Whether something accepts TCP connections on 127.0.0.1:`port`.
pub fn port_accepts(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
}

/// A server that `start` starts (returning it, its folder and its port) and that a test holds when
/// it panics is gone afterwards: its folder removed, its port closed.
pub fn assert_cleaned_up_after_a_panic(
    start: impl FnOnce() -> (Box<dyn std::any::Any + Send>, PathBuf, u16) + Send + 'static,
) {
    let (tx, rx) = std::sync::mpsc::channel();
    let outcome = std::thread::spawn(move || {
        let (_server, dir, port) = start();
        tx.send((dir, port)).expect("sending the folder");
        panic!("the test failed");
    })
    .join();
    assert!(outcome.is_err());
    let (dir, port) = rx.recv().expect("the folder and port");
    assert!(!dir.exists(), "{} is still there", dir.display());
    assert!(!port_accepts(port));
}

#[test]
fn free_port_gives_a_port_nobody_listens_on() {
    let port = testkit::free_port();
    assert_ne!(port, 0);
    assert!(!port_accepts(port));
}

/// Below the kernel's ephemeral ports, so a server's port stays free while it is down for a restart
/// (an outgoing connection of another test once took a stopped PostgreSQL's port).
#[test]
fn free_ports_are_below_the_ephemeral_range_and_spread_out() {
    let ports: std::collections::BTreeSet<u16> = (0..50).map(|_| testkit::free_port()).collect();
    assert!(
        ports
            .iter()
            .all(|port| (20000..32768).contains(port) && *port != 26257),
        "{ports:?}"
    );
    assert!(ports.len() > 40, "random, not one port again: {ports:?}");
}

#[test]
fn init_tracing_installs_a_subscriber_and_can_be_called_twice() {
    // nextest runs each test in a process of its own: nothing was installed before.
    assert!(!tracing::dispatcher::has_been_set());
    testkit::init_tracing();
    // A second call (every test helper makes one) neither panics nor replaces the first.
    testkit::init_tracing();
    assert!(
        tracing::dispatcher::has_been_set(),
        "a global subscriber is installed"
    );
}
