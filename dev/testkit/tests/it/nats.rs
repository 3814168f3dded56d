use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use testkit::NatsServer;
use testkit::host::{NATS_SERVER_BIN, NatsVersion};

use crate::support::{assert_cleaned_up_after_a_panic, port_accepts};

/// Just enough of the NATS client protocol to ask the JetStream API a question.
struct RawClient {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    info: String,
}

impl RawClient {
    fn connect(port: u16) -> RawClient {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connecting to nats-server");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("setting a read timeout");
        let writer = stream.try_clone().expect("cloning the stream");
        let mut reader = BufReader::new(stream);
        let mut info = String::new();
        reader.read_line(&mut info).expect("reading INFO");
        let mut client = RawClient {
            reader,
            writer,
            info,
        };
        client.send("CONNECT {\"verbose\":false,\"headers\":true,\"no_responders\":true}\r\nSUB reply 1\r\n");
        client
    }

    fn send(&mut self, text: &str) {
        self.writer
            .write_all(text.as_bytes())
            .expect("writing to nats-server");
    }

    /// Publishes `payload` on `subject` and returns the reply's payload.
    fn request(&mut self, subject: &str, payload: &str) -> String {
        self.send(&format!(
            "PUB {subject} reply {}\r\n{payload}\r\n",
            payload.len()
        ));
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).expect("reading a reply");
            if line.starts_with("PING") {
                self.send("PONG\r\n");
            } else if line.starts_with("-ERR") {
                panic!("nats-server said {line}");
            } else if let Some(header) = line.strip_prefix("MSG ") {
                let size: usize = header
                    .split_whitespace()
                    .last()
                    .and_then(|size| size.parse().ok())
                    .expect("the size of the reply");
                let mut body = vec![0; size + 2];
                self.reader
                    .read_exact(&mut body)
                    .expect("reading the reply");
                body.truncate(size);
                return String::from_utf8(body).expect("a UTF-8 reply");
            }
        }
    }
}

#[test]
fn nats_server_speaks_jetstream() {
    testkit::init_tracing();
    let nats = NatsServer::start().expect("starting nats-server");
    assert!(nats.is_running());
    assert_eq!(nats.url(), format!("nats://127.0.0.1:{}", nats.port()));

    let client = RawClient::connect(nats.port());
    assert!(client.info.starts_with("INFO"), "{}", client.info);
    assert!(
        client.info.contains("\"jetstream\":true"),
        "{}",
        client.info
    );
    assert!(nats.log().contains("Server is ready"), "{}", nats.log());
}

#[test]
fn a_stopped_nats_server_closes_its_port_and_keeps_jetstream_data_when_started_again() {
    testkit::init_tracing();
    let mut nats = NatsServer::start().expect("starting nats-server");
    let port = nats.port();
    let mut client = RawClient::connect(port);
    let created = client.request(
        "$JS.API.STREAM.CREATE.ORDERS",
        r#"{"name":"ORDERS","subjects":["orders.>"],"storage":"file"}"#,
    );
    assert!(!created.contains("\"error\""), "{created}");
    let ack = client.request("orders.placed", "order 1");
    assert!(ack.contains("\"seq\":1"), "{ack}");

    nats.stop().expect("stopping nats-server");
    assert!(!nats.is_running());
    assert!(!port_accepts(port));
    nats.stop().expect("stopping twice is harmless");

    nats.start_again().expect("starting nats-server again");
    assert!(nats.is_running());
    assert_eq!(nats.port(), port);
    let mut client = RawClient::connect(port);
    let info = client.request("$JS.API.STREAM.INFO.ORDERS", "");
    assert!(info.contains("\"messages\":1"), "{info}");
}

#[test]
fn dropping_nats_server_removes_its_folder_and_closes_its_port() {
    let nats = NatsServer::start().expect("starting nats-server");
    let (dir, port) = (nats.dir().to_path_buf(), nats.port());
    assert!(nats.store_dir().is_dir());

    drop(nats);
    assert!(!dir.exists(), "{} is still there", dir.display());
    assert!(!port_accepts(port));
}

#[test]
fn nats_server_is_cleaned_up_when_a_test_panics() {
    assert_cleaned_up_after_a_panic(|| {
        let nats = NatsServer::start().expect("starting nats-server");
        let (dir, port) = (nats.dir().to_path_buf(), nats.port());
        (Box::new(nats), dir, port)
    });
}

#[test]
fn start_again_explains_itself_when_the_port_is_taken() {
    let mut nats = NatsServer::start().expect("starting nats-server");
    nats.stop().expect("stopping nats-server");
    let _squatter =
        std::net::TcpListener::bind(("127.0.0.1", nats.port())).expect("taking the port");

    let error = nats.start_again().expect_err("the port is taken");
    let message = format!("{error:#}");
    assert!(message.contains("address already in use"), "{message}");
    assert!(!nats.is_running());
}

#[test]
fn the_server_that_runs_is_the_one_nats_server_bin_names_and_speaks_its_version() {
    testkit::init_tracing();
    let nats = NatsServer::start().expect("starting nats-server");
    if let Some(chosen) = std::env::var_os(NATS_SERVER_BIN).filter(|value| !value.is_empty()) {
        assert_eq!(nats.binary(), std::path::Path::new(&chosen));
    }
    let version = NatsVersion::of(nats.binary()).expect("the binary's version");
    let client = RawClient::connect(nats.port());
    assert!(
        client.info.contains(&format!("\"version\":\"{version}\"")),
        "{version}: {}",
        client.info
    );
}
