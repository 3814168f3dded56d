//! Service identities (mTLS): with `EVENTSTORE_TLS_CLIENT_CA` the event store takes only clients
//! whose certificate that authority signed, and lets each identity (the certificate's first DNS
//! subjectAltName) append only its own event types. Hostile clients, one test per case; each
//! asserts the status and that nothing was written.

use std::path::Path;
use std::time::Duration;

use eventstore::App;
use eventstore_proto::GetEventsRequest;
use testkit::tls::{Certificates, Signer};
use tokio::sync::oneshot;
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use uuid::Uuid;

use crate::harness::{Client, Stack, append, append_all, event};

/// Every event type of the pipeline.
const EVENT_TYPES: [&str; 7] = [
    "created",
    "paymentdebited",
    "paymentfailed",
    "approved",
    "rejected",
    "cancelled",
    "paymentrefunded",
];

/// The table, written out here rather than read from `eventstore::authz`, so that a change
/// there that this test does not expect fails it. `mallory` has a certificate of the right
/// authority but is in no table.
const EXPECTED: [(&str, &[&str]); 7] = [
    ("ordersvc", &["created", "cancelled"]),
    (
        "paymentworker",
        &["paymentdebited", "paymentfailed", "paymentrefunded"],
    ),
    ("reviewworker", &["approved", "rejected"]),
    ("deadlinewatcher", &["cancelled"]),
    ("querymodelworker", &[]),
    ("orderctl", &[]),
    ("mallory", &[]),
];

/// An event store requiring client certificates of `ca`; stopped when dropped.
struct MtlsInstance {
    addr: std::net::SocketAddr,
    _stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Drop for MtlsInstance {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_mtls(stack: &Stack, certs: &Certificates) -> MtlsInstance {
    let mut config = stack.config();
    config.tls_cert = Some(certs.server_cert());
    config.tls_key = Some(certs.server_key());
    config.tls_client_ca = Some(certs.ca());
    let app = App::build(config).await.expect("event store builds");
    assert!(app.uses_mtls());
    let addr = app.local_addr();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    MtlsInstance {
        addr,
        _stop: stop,
        task,
    }
}

/// A gRPC client trusting `ca.pem`, presenting the certificate and key given (or none).
fn client(
    instance: &MtlsInstance,
    certs: &Certificates,
    identity: Option<(&Path, &Path)>,
) -> Client {
    let read = |path: &Path| std::fs::read(path).expect("reading a test certificate");
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(&certs.ca())));
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(read(cert), read(key)));
    }
    let channel: Channel =
        Endpoint::from_shared(format!("https://127.0.0.1:{}", instance.addr.port()))
            .expect("endpoint")
            .timeout(Duration::from_secs(5))
            .connect_timeout(Duration::from_secs(5))
            .tls_config(tls)
            .expect("client TLS")
            .connect_lazy();
    Client::new(channel)
}

/// A client with `identity`'s certificate signed by `ca`.
fn service(instance: &MtlsInstance, certs: &Certificates, identity: &str) -> Client {
    let (cert, key) = certs
        .make_client(identity, Signer::Ca)
        .expect("client certificate");
    client(instance, certs, Some((&cert, &key)))
}

/// Events and outbox rows stored, of `aggregates` (every aggregate when empty).
async fn stored(stack: &Stack, aggregates: &[&str]) -> (i64, i64) {
    let pool = stack.pool().await;
    let aggregates: Vec<String> = aggregates.iter().map(|a| (*a).to_owned()).collect();
    let count = |table: &str| {
        format!(
            "SELECT count(*) FROM {table} WHERE cardinality($1::text[]) = 0 OR aggregate_id = ANY($1)"
        )
    };
    let events: i64 = sqlx::query_scalar(&count("events"))
        .bind(&aggregates)
        .fetch_one(&pool)
        .await
        .expect("count events");
    let outbox: i64 = sqlx::query_scalar(&count("outbox"))
        .bind(&aggregates)
        .fetch_one(&pool)
        .await
        .expect("count outbox rows");
    pool.close().await;
    (events, outbox)
}

/// The call failed in the transport (no gRPC status came back) because the server ended the TLS
/// handshake with `alert`.
fn assert_handshake_refused(status: &tonic::Status, alert: &str) {
    assert!(
        matches!(status.code(), Code::Unknown | Code::Unavailable),
        "a transport failure, not an answer: {status:?}"
    );
    let mut chain = status.message().to_owned();
    let mut source = std::error::Error::source(status);
    while let Some(cause) = source {
        chain.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    assert!(
        chain.contains(&format!("received fatal alert: {alert}")),
        "the server refused the handshake with {alert}: {chain}"
    );
}

#[tokio::test]
async fn each_identity_appends_exactly_the_event_types_the_table_allows() {
    let certs = Certificates::make().expect("test certificates");
    let stack = Stack::start().await;
    let instance = serve_mtls(&stack, &certs).await;
    let mut allowed_appends = 0;
    for (identity, allowed) in EXPECTED {
        let mut grpc = service(&instance, &certs, identity);
        for event_type in EVENT_TYPES {
            let aggregate = Uuid::new_v4().to_string();
            let result = append(
                &mut grpc,
                event(
                    &aggregate,
                    event_type,
                    serde_json::json!({ "by": identity }),
                ),
                0,
            )
            .await;
            if allowed.contains(&event_type) {
                let response =
                    result.unwrap_or_else(|s| panic!("{identity} may append {event_type}: {s:?}"));
                assert_eq!(response.aggregate_version, 1);
                assert_eq!(stored(&stack, &[&aggregate]).await.0, 1);
                allowed_appends += 1;
            } else {
                let status = result
                    .err()
                    .unwrap_or_else(|| panic!("{identity} may not append {event_type}"));
                assert_eq!(
                    status.code(),
                    Code::PermissionDenied,
                    "{identity} {event_type}: {status:?}"
                );
                assert!(
                    status.message().contains(identity) && status.message().contains(event_type),
                    "the refusal names the identity and the type: {status:?}"
                );
                assert_eq!(
                    stored(&stack, &[&aggregate]).await,
                    (0, 0),
                    "{identity} appended {event_type}"
                );
            }
        }
    }
    assert_eq!(
        allowed_appends, 8,
        "the table allows eight (identity, type) pairs"
    );
    assert_eq!(
        stored(&stack, &[]).await.0,
        8,
        "only the allowed appends were stored"
    );
}

#[tokio::test]
async fn a_batch_mixing_an_allowed_and_a_refused_event_writes_nothing() {
    let certs = Certificates::make().expect("test certificates");
    let stack = Stack::start().await;
    let instance = serve_mtls(&stack, &certs).await;
    let mut payments = service(&instance, &certs, "paymentworker");
    let (paid, forged) = (Uuid::new_v4().to_string(), Uuid::new_v4().to_string());
    let status = append_all(
        &mut payments,
        vec![
            (event(&paid, "paymentdebited", serde_json::json!({})), 0),
            (event(&forged, "approved", serde_json::json!({})), 0),
        ],
    )
    .await
    .expect_err("the whole call is refused");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(
        status.message().contains("paymentworker") && status.message().contains("approved"),
        "{status:?}"
    );
    assert_eq!(
        stored(&stack, &[]).await,
        (0, 0),
        "none of the batch's events was written"
    );

    // The allowed event alone goes through: the refusal was about the other one.
    let outcomes = append_all(
        &mut payments,
        vec![(event(&paid, "paymentdebited", serde_json::json!({})), 0)],
    )
    .await
    .expect("an allowed batch");
    assert_eq!(outcomes[0].code, 0, "{outcomes:?}");
    assert_eq!(stored(&stack, &[&paid, &forged]).await.0, 1);
}

#[tokio::test]
async fn a_client_without_a_certificate_is_refused_at_the_handshake() {
    let certs = Certificates::make().expect("test certificates");
    let stack = Stack::start().await;
    let instance = serve_mtls(&stack, &certs).await;
    let mut anonymous = client(&instance, &certs, None);
    let aggregate = Uuid::new_v4().to_string();
    let status = append(
        &mut anonymous,
        event(&aggregate, "created", serde_json::json!({})),
        0,
    )
    .await
    .expect_err("no certificate, no call");
    assert_handshake_refused(&status, "CertificateRequired");
    let reads = anonymous
        .get_events(GetEventsRequest {
            aggregate_id: aggregate.clone(),
            ..Default::default()
        })
        .await
        .expect_err("no reads either");
    assert_handshake_refused(&reads, "CertificateRequired");
    assert_eq!(stored(&stack, &[]).await, (0, 0), "nothing was written");
}

#[tokio::test]
async fn a_certificate_from_another_authority_is_refused_at_the_handshake() {
    let certs = Certificates::make().expect("test certificates");
    let stack = Stack::start().await;
    let instance = serve_mtls(&stack, &certs).await;
    // Named like a service allowed to append `created`, signed by an authority the store does not
    // trust for clients.
    let (cert, key) = certs
        .make_client("ordersvc", Signer::OtherCa)
        .expect("foreign certificate");
    let mut impostor = client(&instance, &certs, Some((&cert, &key)));
    let status = append(
        &mut impostor,
        event(
            &Uuid::new_v4().to_string(),
            "created",
            serde_json::json!({}),
        ),
        0,
    )
    .await
    .expect_err("a foreign certificate, no call");
    assert_handshake_refused(&status, "UnknownCA");
    assert_eq!(stored(&stack, &[]).await, (0, 0), "nothing was written");
}

#[tokio::test]
async fn a_reader_identity_may_read_but_not_append() {
    let certs = Certificates::make().expect("test certificates");
    let stack = Stack::start().await;
    let instance = serve_mtls(&stack, &certs).await;
    let aggregate = Uuid::new_v4().to_string();
    append(
        &mut service(&instance, &certs, "ordersvc"),
        event(&aggregate, "created", serde_json::json!({})),
        0,
    )
    .await
    .expect("ordersvc creates");
    for reader in ["querymodelworker", "orderctl"] {
        let mut grpc = service(&instance, &certs, reader);
        let status = append(
            &mut grpc,
            event(&aggregate, "approved", serde_json::json!({})),
            1,
        )
        .await
        .expect_err("a reader appends nothing");
        assert_eq!(
            status.code(),
            Code::PermissionDenied,
            "{reader}: {status:?}"
        );
        assert!(status.message().contains(reader), "{status:?}");
        let events = grpc
            .get_events(GetEventsRequest {
                aggregate_id: aggregate.clone(),
                ..Default::default()
            })
            .await
            .expect("a reader reads")
            .into_inner()
            .events;
        assert_eq!(events.len(), 1, "{reader}");
    }
    assert_eq!(
        stored(&stack, &[]).await.0,
        1,
        "only ordersvc's event was written"
    );
}

#[tokio::test]
async fn streaming_reads_are_for_the_readers_of_the_whole_store_only() {
    let certs = Certificates::make().expect("test certificates");
    let stack = Stack::start().await;
    let instance = serve_mtls(&stack, &certs).await;
    let read_all = |mut grpc: Client| async move {
        grpc.get_events_stream(GetEventsRequest::default())
            .await
            .map(|_| ())
    };
    for reader in ["querymodelworker", "orderctl"] {
        read_all(service(&instance, &certs, reader))
            .await
            .unwrap_or_else(|s| panic!("{reader} streams: {s:?}"));
    }
    for writer in [
        "ordersvc",
        "paymentworker",
        "reviewworker",
        "deadlinewatcher",
    ] {
        let status = read_all(service(&instance, &certs, writer))
            .await
            .expect_err("writers read one aggregate at a time");
        assert_eq!(
            status.code(),
            Code::PermissionDenied,
            "{writer}: {status:?}"
        );
    }
}

#[tokio::test]
async fn a_client_ca_without_a_server_certificate_stops_the_start() {
    let certs = Certificates::make().expect("test certificates");
    let stack = Stack::start().await;
    let mut config = stack.config();
    config.tls_client_ca = Some(certs.ca());
    let err = App::build(config).await.err().expect("refused");
    let message = format!("{err:#}");
    assert!(message.contains("EVENTSTORE_TLS_CLIENT_CA"), "{message}");

    let mut config = stack.config();
    config.tls_cert = Some(certs.server_cert());
    config.tls_key = Some(certs.server_key());
    config.tls_client_ca = Some(certs.path("missing.pem"));
    let err = App::build(config).await.err().expect("refused");
    let message = format!("{err:#}");
    assert!(message.contains("EVENTSTORE_TLS_CLIENT_CA"), "{message}");
}
