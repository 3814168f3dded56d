//! A key set fetched from a URL (`ORDERSVC_JWKS=https://…` or `http://…`): a JWKS server of the
//! test's own on 127.0.0.1, over TLS with a certificate of `testkit::tls` or plain, whose key set
//! the test changes while it runs and which counts what it was asked.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get as route_get;
use ordersvc::{AppState, router};
use testkit::tls::Certificates;
use testkit::tokens::TokenIssuer;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::harness::{AUDIENCE, Answer, ISSUER, Stack, call_raw, get, with_token};

/// What the JWKS server serves and what it saw.
#[derive(Default)]
struct Served {
    jwks: Mutex<String>,
    /// Key sets handed out (complete HTTP answers).
    fetches: AtomicUsize,
    /// Connections accepted, whether or not their TLS handshake succeeded.
    connections: AtomicUsize,
}

/// A JWKS server on 127.0.0.1 (port 0), stopped on `Drop`.
struct JwksServer {
    url: String,
    served: Arc<Served>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl JwksServer {
    /// Serves `/jwks.json` over TLS with `testkit::tls`'s server certificate (signed by its `ca`).
    async fn https(certificates: &Certificates) -> JwksServer {
        let tcp = TcpListener::bind("127.0.0.1:0").await.expect("a port");
        let port = tcp.local_addr().expect("the address").port();
        let served = Arc::new(Served::default());
        let listener = TlsListener {
            tcp,
            acceptor: acceptor(&certificates.server_cert(), &certificates.server_key()),
            served: served.clone(),
        };
        let task = tokio::spawn(serve(listener, served.clone()));
        JwksServer {
            url: format!("https://127.0.0.1:{port}/jwks.json"),
            served,
            task,
        }
    }

    /// Serves `/jwks.json` over plain HTTP.
    async fn http() -> JwksServer {
        let tcp = TcpListener::bind("127.0.0.1:0").await.expect("a port");
        let port = tcp.local_addr().expect("the address").port();
        let served = Arc::new(Served::default());
        let task = tokio::spawn(serve(tcp, served.clone()));
        JwksServer {
            url: format!("http://127.0.0.1:{port}/jwks.json"),
            served,
            task,
        }
    }

    fn set(&self, jwks: String) {
        *self
            .served
            .jwks
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = jwks;
    }

    fn fetches(&self) -> usize {
        self.served.fetches.load(Ordering::SeqCst)
    }

    fn connections(&self) -> usize {
        self.served.connections.load(Ordering::SeqCst)
    }
}

async fn serve<L>(listener: L, served: Arc<Served>)
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    async fn jwks(State(served): State<Arc<Served>>) -> impl IntoResponse {
        served.fetches.fetch_add(1, Ordering::SeqCst);
        let jwks = served
            .jwks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        ([(header::CONTENT_TYPE, "application/json")], jwks)
    }
    let app = Router::new()
        .route("/jwks.json", route_get(jwks))
        .with_state(served);
    // Runs until the test aborts it.
    let _ = axum::serve(listener, app).await;
}

fn acceptor(cert: &Path, key: &Path) -> TlsAcceptor {
    let chain = CertificateDer::pem_file_iter(cert)
        .expect("the server certificate")
        .collect::<Result<Vec<_>, _>>()
        .expect("the server certificate");
    let key = PrivateKeyDer::from_pem_file(key).expect("the server key");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .expect("the server's TLS configuration");
    TlsAcceptor::from(Arc::new(config))
}

/// TCP then a TLS handshake; a client that refuses the certificate is dropped and the next one is
/// served.
struct TlsListener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    served: Arc<Served>,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else {
                continue;
            };
            self.served.connections.fetch_add(1, Ordering::SeqCst);
            if let Ok(tls) = self.acceptor.accept(tcp).await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}

/// An ordersvc on `stack` whose key set is the URL `jwks`, trusting the authorities in `ca`
/// besides the system's.
fn ordersvc_with(stack: &Stack, jwks: &str, ca: Option<&Path>) -> AppState {
    let (_, state) = stack.state_with(|config| {
        *config = config.clone().with_tokens(jwks, ISSUER, AUDIENCE);
        config.jwks_ca = ca.map(Path::to_path_buf);
    });
    state
}

/// A protected request (the list of c1's orders) with `token`.
async fn list_with(state: &AppState, token: &str) -> Answer {
    call_raw(
        router(state.clone()),
        with_token(get("/api/orders?customer_id=c1"), token),
    )
    .await
}

#[tokio::test]
async fn an_https_key_set_is_fetched_and_a_new_key_found_by_one_refresh() {
    let stack = Stack::start().await;
    let certificates = Certificates::make().expect("certificates");
    let server = JwksServer::https(&certificates).await;
    let old = TokenIssuer::generate(ISSUER, AUDIENCE).expect("a key");
    server.set(old.jwks().to_string());
    let state = ordersvc_with(&stack, &server.url, Some(&certificates.ca()));

    let answer = list_with(&state, &old.customer("c1")).await;
    // Taken once the answer is in, so after the fetch's start that the refresh interval counts from.
    let first_fetch = tokio::time::Instant::now();
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(server.fetches(), 1, "the key set was fetched once");

    // The issuer rotates: the new key is published, then used. The first fetch was for an unknown
    // kid too, so within MIN_REFRESH of it the set is not fetched again.
    let new = TokenIssuer::generate(ISSUER, AUDIENCE).expect("a key");
    server.set(old.jwks_with(&[&new]).to_string());
    let answer = list_with(&state, &new.customer("c1")).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{}", answer.body);
    assert_eq!(server.fetches(), 1, "no refresh within MIN_REFRESH");
    tokio::time::sleep_until(first_fetch + ordersvc::MIN_REFRESH).await;
    let answer = list_with(&state, &new.customer("c1")).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(server.fetches(), 2, "one refresh found the new key");
    // Both keys are known now: no fetch for either.
    let answer = list_with(&state, &old.customer("c1")).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(server.fetches(), 2, "a known key costs no fetch");
}

#[tokio::test]
async fn an_https_server_certified_by_another_authority_is_refused_and_nothing_breaks() {
    let stack = Stack::start().await;
    let certificates = Certificates::make().expect("certificates");
    let server = JwksServer::https(&certificates).await;
    let issuer = TokenIssuer::generate(ISSUER, AUDIENCE).expect("a key");
    server.set(issuer.jwks().to_string());
    // The system's authorities and one that did not sign the server's certificate.
    let state = ordersvc_with(&stack, &server.url, Some(&certificates.other_ca()));

    let answer = list_with(&state, &issuer.customer("c1")).await;
    // As for any key set that cannot be fetched while no key is known: 503, the token unused.
    assert_eq!(
        answer.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        answer.body
    );
    assert!(
        answer.body["error"]
            .as_str()
            .is_some_and(|error| error.contains("key set is unavailable")),
        "{}",
        answer.body
    );
    assert!(server.connections() >= 1, "ordersvc did reach the server");
    assert_eq!(
        server.fetches(),
        0,
        "no key set crossed the refused handshake"
    );
    // The service goes on: its probes answer, and the token is still not let in.
    let answer = call_raw(router(state.clone()), get("/healthz")).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    let answer = list_with(&state, &issuer.customer("c1")).await;
    assert_ne!(answer.status, StatusCode::OK, "{}", answer.body);
}

#[tokio::test]
async fn an_http_key_set_still_works() {
    let stack = Stack::start().await;
    let server = JwksServer::http().await;
    let issuer = TokenIssuer::generate(ISSUER, AUDIENCE).expect("a key");
    server.set(issuer.jwks().to_string());
    let state = ordersvc_with(&stack, &server.url, None);

    let answer = list_with(&state, &issuer.customer("c1")).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(server.fetches(), 1);
}

#[tokio::test]
async fn a_key_set_over_one_mebibyte_is_refused() {
    let stack = Stack::start().await;
    let server = JwksServer::http().await;
    let issuer = TokenIssuer::generate(ISSUER, AUDIENCE).expect("a key");
    let mut jwks = issuer.jwks();
    jwks["padding"] = "x".repeat(ordersvc::MAX_JWKS_BYTES).into();
    server.set(jwks.to_string());
    let state = ordersvc_with(&stack, &server.url, None);

    let answer = list_with(&state, &issuer.customer("c1")).await;
    assert_eq!(
        answer.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        answer.body
    );
    assert_eq!(server.fetches(), 1, "the oversized key set was served");
}

#[tokio::test]
async fn an_unreadable_or_certificateless_jwks_ca_stops_the_start_naming_the_variable() {
    let certificates = Certificates::make().expect("certificates");
    let not_pem = certificates.path("not-a-ca.pem");
    std::fs::write(&not_pem, "no certificate here").expect("a file");
    for ca in [certificates.path("missing.pem"), not_pem] {
        let error = <ordersvc::Config as clap::Parser>::try_parse_from([
            "ordersvc",
            "--jwks",
            "https://id.example/jwks.json",
            "--jwks-ca",
            ca.to_str().expect("a UTF-8 path"),
        ])
        .err()
        .map(|error| error.to_string())
        .unwrap_or_default();
        assert!(error.contains(ordersvc::JWKS_CA_VARIABLE), "{error}");
    }
    // An authority with an http:// key set would check nothing: refused too.
    let config = crate::harness::config("http://127.0.0.1:1", "postgresql://x@127.0.0.1:1/db")
        .with_tokens("http://127.0.0.1:1/jwks.json", ISSUER, AUDIENCE);
    let config = ordersvc::Config {
        jwks_ca: Some(certificates.ca()),
        ..config
    };
    let error = AppState::new(&config)
        .err()
        .map(|error| format!("{error:#}"))
        .unwrap_or_default();
    assert!(error.contains(ordersvc::JWKS_CA_VARIABLE), "{error}");
}
