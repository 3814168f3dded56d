//! gRPC over TLS: the event store serves with `EVENTSTORE_TLS_CERT` and `EVENTSTORE_TLS_KEY`, the
//! services' client trusts `EVENTSTORE_TLS_CA`. Certificates are made for each test in-process
//! ([`testkit::tls`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use eventstore::App;
use pipeline_runtime::eventstore::{ClientError, ClientTls, EventStoreClient, NewEvent};
use testkit::tls::Certificates;
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::harness::Stack;

const TIMEOUT: Duration = Duration::from_secs(5);

/// An event store serving TLS; stopped when dropped.
struct TlsInstance {
    addr: std::net::SocketAddr,
    _stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Drop for TlsInstance {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_tls(stack: &Stack, cert: &Path, key: &Path) -> TlsInstance {
    let mut config = stack.config();
    config.tls_cert = Some(cert.to_owned());
    config.tls_key = Some(key.to_owned());
    let app = App::build(config).await.expect("event store builds");
    assert!(app.uses_tls());
    let addr = app.local_addr();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    TlsInstance {
        addr,
        _stop: stop,
        task,
    }
}

fn created(aggregate: &str) -> NewEvent {
    NewEvent {
        event_id: Uuid::new_v4(),
        event_type: "created".to_owned(),
        aggregate_id: aggregate.to_owned(),
        aggregate_type: "order".to_owned(),
        data: serde_json::json!({ "over": "tls" }),
        metadata: Default::default(),
    }
}

#[tokio::test]
async fn appends_and_reads_succeed_over_tls_and_clients_without_the_ca_are_refused() {
    let certs = Certificates::make().expect("test certificates");
    let stack = Stack::start().await;
    let instance = serve_tls(&stack, &certs.path("server.pem"), &certs.path("server.key")).await;
    let https = format!("https://127.0.0.1:{}", instance.addr.port());

    let client = EventStoreClient::connect_lazy_with(
        &https,
        TIMEOUT,
        &ClientTls::with_ca(certs.path("ca.pem")),
    )
    .expect("client with the CA");
    let aggregate = Uuid::new_v4().to_string();
    let event = created(&aggregate);
    let appended = client
        .append(event.clone(), 0)
        .await
        .expect("append over TLS");
    assert_eq!(appended.version, 1);
    let events = client.events(&aggregate).await.expect("read over TLS");
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].event_id, event.event_id);
    assert_eq!(events[0].event_data, event.data);

    // A client that trusts another authority: the handshake fails on the server's certificate.
    let stranger = EventStoreClient::connect_lazy_with(
        &https,
        TIMEOUT,
        &ClientTls::with_ca(certs.path("other-ca.pem")),
    )
    .expect("client with another CA");
    let err = stranger
        .append(created(&aggregate), 1)
        .await
        .expect_err("an unknown issuer is refused");
    assert!(matches!(err, ClientError::Unavailable(_)), "{err:?}");
    assert!(
        err.to_string().contains("certificate"),
        "the error says why: {err}"
    );

    // A plaintext client gets no answer it can read.
    let plain = EventStoreClient::connect_lazy_with(
        &format!("http://127.0.0.1:{}", instance.addr.port()),
        TIMEOUT,
        &ClientTls::default(),
    )
    .expect("plaintext client");
    let err = plain
        .append(created(&aggregate), 1)
        .await
        .expect_err("plaintext is refused");
    assert!(err.is_transient(), "{err:?}");
    assert!(
        err.to_string().contains("connection"),
        "the error says more than \"transport error\": {err}"
    );

    // Nothing but the first event was stored.
    assert_eq!(
        client.events(&aggregate).await.expect("read").len(),
        1,
        "refused clients appended nothing"
    );
}

#[tokio::test]
async fn a_tls_misconfiguration_stops_the_start_naming_the_variable() {
    let certs = Certificates::make().expect("test certificates");
    let stack = Stack::start().await;
    let missing = certs.path("missing.pem");
    let not_pem = certs.path("not-pem.txt");
    std::fs::write(&not_pem, "no PEM here\n").expect("a file that is not PEM");
    let cases: [(Option<PathBuf>, Option<PathBuf>, &str); 5] = [
        (Some(certs.path("server.pem")), None, "EVENTSTORE_TLS_KEY"),
        (None, Some(certs.path("server.key")), "EVENTSTORE_TLS_CERT"),
        (
            Some(missing),
            Some(certs.path("server.key")),
            "EVENTSTORE_TLS_CERT",
        ),
        (
            Some(certs.path("server.pem")),
            Some(not_pem),
            "EVENTSTORE_TLS_KEY",
        ),
        // The key of another certificate.
        (
            Some(certs.path("server.pem")),
            Some(certs.path("ca.key")),
            "EVENTSTORE_TLS_KEY",
        ),
    ];
    for (cert, key, variable) in cases {
        let mut config = stack.config();
        config.tls_cert = cert.clone();
        config.tls_key = key.clone();
        let err = App::build(config)
            .await
            .err()
            .unwrap_or_else(|| panic!("{cert:?} and {key:?} are refused"));
        let message = format!("{err:#}");
        assert!(message.contains(variable), "{variable}: {message}");
    }
}
