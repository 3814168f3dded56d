//! A client of the event store for services: one long-lived gRPC channel, typed outcomes.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use eventstore_proto as pb;
use pb::event_store_client::EventStoreClient as Grpc;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use uuid::Uuid;

use tracing::Instrument as _;

use crate::pem::{self, Pem};
use crate::stream::{EventEnvelope, STREAM};
use crate::tracecontext;

/// An event to append.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub event_id: Uuid,
    pub event_type: String,
    pub aggregate_id: String,
    pub aggregate_type: String,
    pub data: serde_json::Value,
    pub metadata: BTreeMap<String, String>,
}

/// A successful append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub version: i64,
    /// The event was already stored (a retry); nothing new was appended.
    pub duplicate: bool,
}

/// Why the event store refused or could not answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// Optimistic concurrency: the aggregate moved on since it was read.
    #[error("version conflict: {0}")]
    Conflict(String),
    /// Another event is stored under this event id.
    #[error("event id already used: {0}")]
    AlreadyExists(String),
    /// The request was malformed (a bug on our side).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The event store or its database cannot answer now; retrying the same call is safe.
    #[error("event store unavailable: {0}")]
    Unavailable(String),
    #[error("event store error: {0}")]
    Other(String),
}

impl ClientError {
    /// True when trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, ClientError::Unavailable(_))
    }
}

impl From<tonic::Status> for ClientError {
    fn from(status: tonic::Status) -> Self {
        // A status made on this side from a transport failure says only "transport error"; its
        // sources say what failed (a refused connection, a TLS handshake, a broken HTTP/2 frame).
        let mut message = status.message().to_owned();
        let mut source = std::error::Error::source(&status);
        while let Some(cause) = source {
            let cause_text = cause.to_string();
            // "transport error" is tonic's wrapper, which adds nothing to the message.
            if cause_text != "transport error" && !message.contains(&cause_text) {
                message.push_str(": ");
                message.push_str(&cause_text);
            }
            source = cause.source();
        }
        match status.code() {
            tonic::Code::FailedPrecondition | tonic::Code::Aborted => {
                ClientError::Conflict(message)
            }
            tonic::Code::AlreadyExists => ClientError::AlreadyExists(message),
            tonic::Code::InvalidArgument | tonic::Code::OutOfRange => ClientError::Invalid(message),
            tonic::Code::Unavailable
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Cancelled
            | tonic::Code::ResourceExhausted
            | tonic::Code::Unknown => ClientError::Unavailable(message),
            _ => ClientError::Other(format!("{:?}: {message}", status.code())),
        }
    }
}

/// The variable naming the certificate authorities (PEM) an `https://` `EVENTSTORE_URL` is checked
/// against.
pub const TLS_CA_VARIABLE: &str = "EVENTSTORE_TLS_CA";
/// The variable naming this service's client certificate (PEM), presented to the event store.
pub const TLS_CLIENT_CERT_VARIABLE: &str = "EVENTSTORE_TLS_CLIENT_CERT";
/// The variable naming the private key (PEM) of `EVENTSTORE_TLS_CLIENT_CERT`.
pub const TLS_CLIENT_KEY_VARIABLE: &str = "EVENTSTORE_TLS_CLIENT_KEY";

/// How a client trusts the event store's certificate; flattened (`#[command(flatten)]`) into the
/// configuration of every binary that talks to the event store.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct ClientTls {
    /// PEM file of the certificate authorities an `https://` `EVENTSTORE_URL` is checked against
    /// (`EVENTSTORE_TLS_CA`), required by an `https://` URL and refused with an `http://` one. The
    /// system's trust store is not consulted: name it here (e.g.
    /// `/etc/ssl/certs/ca-certificates.crt`) to trust it. Read and checked at start: a file that
    /// cannot be read or holds no certificate stops it.
    #[arg(
        id = "eventstore_tls_ca",
        long = "eventstore-tls-ca",
        env = TLS_CA_VARIABLE,
        value_name = TLS_CA_VARIABLE,
        value_parser = ca_file,
        global = true
    )]
    pub ca: Option<PathBuf>,

    /// PEM file of this service's client certificate (`EVENTSTORE_TLS_CLIENT_CERT`), presented to
    /// an event store that requires one (`EVENTSTORE_TLS_CLIENT_CA` there); its first DNS
    /// subjectAltName is the identity the event store authorizes. With
    /// `EVENTSTORE_TLS_CLIENT_KEY`, both or neither, and only with an `https://` URL.
    #[arg(
        id = "eventstore_tls_client_cert",
        long = "eventstore-tls-client-cert",
        env = TLS_CLIENT_CERT_VARIABLE,
        value_name = TLS_CLIENT_CERT_VARIABLE,
        value_parser = client_cert_file,
        global = true
    )]
    pub client_cert: Option<PathBuf>,

    /// PEM file of the private key of `EVENTSTORE_TLS_CLIENT_CERT` (`EVENTSTORE_TLS_CLIENT_KEY`).
    #[arg(
        id = "eventstore_tls_client_key",
        long = "eventstore-tls-client-key",
        env = TLS_CLIENT_KEY_VARIABLE,
        value_name = TLS_CLIENT_KEY_VARIABLE,
        value_parser = client_key_file,
        global = true
    )]
    pub client_key: Option<PathBuf>,
}

/// The value of `EVENTSTORE_TLS_CA`: a readable PEM file with a certificate, or empty (none).
fn ca_file(value: &str) -> Result<PathBuf, String> {
    pem_file(TLS_CA_VARIABLE, value, Pem::Certificate)
}

/// The value of `EVENTSTORE_TLS_CLIENT_CERT`: a readable PEM certificate, or empty (none).
fn client_cert_file(value: &str) -> Result<PathBuf, String> {
    pem_file(TLS_CLIENT_CERT_VARIABLE, value, Pem::Certificate)
}

/// The value of `EVENTSTORE_TLS_CLIENT_KEY`: a readable PEM private key, or empty (none).
fn client_key_file(value: &str) -> Result<PathBuf, String> {
    pem_file(TLS_CLIENT_KEY_VARIABLE, value, Pem::PrivateKey)
}

fn pem_file(variable: &str, value: &str, kind: Pem) -> Result<PathBuf, String> {
    let path = PathBuf::from(value);
    if !value.is_empty() {
        pem::read(variable, &path, kind).map_err(|err| format!("{err:#}"))?;
    }
    Ok(path)
}

/// A path that was given and is not empty (an empty variable is as if unset).
fn given(path: Option<&PathBuf>) -> Option<&PathBuf> {
    path.filter(|path| !path.as_os_str().is_empty())
}

impl ClientTls {
    /// Trusts the authorities in the PEM file at `ca`.
    pub fn with_ca(ca: impl Into<PathBuf>) -> Self {
        ClientTls {
            ca: Some(ca.into()),
            ..ClientTls::default()
        }
    }

    /// Presents the client certificate at `cert` with its key at `key` (mTLS).
    pub fn with_client_identity(
        mut self,
        cert: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
    ) -> Self {
        self.client_cert = Some(cert.into());
        self.client_key = Some(key.into());
        self
    }

    /// The client certificate and key as a TLS identity, if given; both or neither.
    fn client_identity(&self) -> anyhow::Result<Option<Identity>> {
        let (cert, key) = match (
            given(self.client_cert.as_ref()),
            given(self.client_key.as_ref()),
        ) {
            (None, None) => return Ok(None),
            (Some(cert), Some(key)) => (cert, key),
            (Some(_), None) => anyhow::bail!(
                "{TLS_CLIENT_CERT_VARIABLE} is set without {TLS_CLIENT_KEY_VARIABLE}: set both or neither"
            ),
            (None, Some(_)) => anyhow::bail!(
                "{TLS_CLIENT_KEY_VARIABLE} is set without {TLS_CLIENT_CERT_VARIABLE}: set both or neither"
            ),
        };
        let cert_pem = pem::read(TLS_CLIENT_CERT_VARIABLE, cert, Pem::Certificate)?;
        let key_pem = pem::read(TLS_CLIENT_KEY_VARIABLE, key, Pem::PrivateKey)?;
        Ok(Some(Identity::from_pem(cert_pem, key_pem)))
    }

    /// Puts TLS on `endpoint` for an `https://` URL; checks that TLS settings and scheme agree.
    fn apply(&self, endpoint: Endpoint, url: &str) -> anyhow::Result<Endpoint> {
        let https = endpoint.uri().scheme_str() == Some("https");
        let identity = self.client_identity()?;
        if identity.is_some() && !https {
            anyhow::bail!(
                "{TLS_CLIENT_CERT_VARIABLE} is set but the event store URL {url:?} is not https://: \
                 a client certificate is presented only over TLS"
            );
        }
        // An empty `EVENTSTORE_TLS_CA` is no CA, as if unset.
        let ca = given(self.ca.as_ref());
        match (ca, https) {
            (None, false) => Ok(endpoint),
            (Some(_), false) => anyhow::bail!(
                "{TLS_CA_VARIABLE} is set but the event store URL {url:?} is not https://: use \
                 https:// to talk TLS, or unset {TLS_CA_VARIABLE}"
            ),
            (None, true) => anyhow::bail!(
                "the event store URL {url:?} is https:// but {TLS_CA_VARIABLE} is not set: name the \
                 PEM file of the authority that signed the event store's certificate"
            ),
            (Some(ca), true) => {
                let pem = pem::read(TLS_CA_VARIABLE, ca, Pem::Certificate)?;
                let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem));
                let with_identity = identity.is_some();
                if let Some(identity) = identity {
                    config = config.identity(identity);
                }
                endpoint.tls_config(config).map_err(|err| {
                    let variables = if with_identity {
                        format!(
                            "{TLS_CA_VARIABLE}, {TLS_CLIENT_CERT_VARIABLE} or {TLS_CLIENT_KEY_VARIABLE}"
                        )
                    } else {
                        TLS_CA_VARIABLE.to_owned()
                    };
                    anyhow::anyhow!(
                        "{variables}: {} cannot be used: {}",
                        ca.display(),
                        error_chain(&err)
                    )
                })
            }
        }
    }
}

/// An error and its sources on one line: tonic's transport errors say little on their own.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The event store client every service shares: cheap to clone, one HTTP/2 connection underneath.
#[derive(Clone)]
pub struct EventStoreClient {
    grpc: Grpc<Channel>,
}

impl EventStoreClient {
    /// Prepares a channel to `url` (e.g. `http://127.0.0.1:50051`) without TLS settings: an
    /// `https://` URL is refused. Services take theirs from the configuration
    /// ([`EventStoreClient::connect_lazy_with`]).
    pub fn connect_lazy(url: &str, timeout: Duration) -> anyhow::Result<Self> {
        Self::connect_lazy_with(url, timeout, &ClientTls::default())
    }

    /// Prepares a channel to `url` (e.g. `http://127.0.0.1:50051`) that connects on first use and
    /// reconnects by itself; calls fail with `Unavailable` after `timeout`. An `https://` URL
    /// speaks TLS, trusting the authorities of `tls` (`EVENTSTORE_TLS_CA`).
    pub fn connect_lazy_with(
        url: &str,
        timeout: Duration,
        tls: &ClientTls,
    ) -> anyhow::Result<Self> {
        let endpoint = Endpoint::from_shared(url.to_owned())
            .with_context(|| format!("invalid event store URL {url:?}"))?
            .connect_timeout(timeout)
            .timeout(timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(20))
            .keep_alive_while_idle(true);
        let endpoint = tls.apply(endpoint, url)?;
        Ok(Self {
            grpc: Grpc::new(endpoint.connect_lazy()),
        })
    }

    /// The generated client, for streaming reads.
    pub fn grpc(&self) -> Grpc<Channel> {
        self.grpc.clone()
    }

    /// Appends `event` expecting the aggregate at `expected_version`.
    ///
    /// A CLIENT span covers the call; its trace context goes into the gRPC metadata and, unless the
    /// caller set a `traceparent` of its own, into the event's metadata, so whatever the event causes
    /// (its publication, the workers' handling) continues this trace.
    pub async fn append(
        &self,
        mut event: NewEvent,
        expected_version: i64,
    ) -> Result<Appended, ClientError> {
        let span = rpc_span("CreateEvent");
        span.record("event.id", tracing::field::display(event.event_id));
        span.record("event.type", event.event_type.as_str());
        span.record("order.id", event.aggregate_id.as_str());
        span.record("expected_version", expected_version);
        tracecontext::fill_metadata(&span, &mut event.metadata);
        let request = pb::CreateEventRequest {
            event: Some(proto_event(event)),
            expected_version,
        };
        let call = async {
            let response = self
                .grpc
                .clone()
                .create_event(traced(request, &span))
                .await
                .map_err(|status| failed(&span, status))?
                .into_inner();
            span.record("aggregate.version", response.aggregate_version);
            Ok(Appended {
                version: response.aggregate_version,
                duplicate: response.duplicate,
            })
        };
        call.instrument(span.clone()).await
    }

    /// Appends several events in one call (`CreateEvents`), each expecting its own version, each with
    /// its own outcome, in order. The outer error is a failure of the whole call: nothing was
    /// decided (safe to retry with the same event ids).
    ///
    /// Each event continues the trace of its own `parent` span (the delivery that caused it) unless
    /// it carries a `traceparent` already: a batch serves many orders, so the call's own span is a
    /// debug span that belongs to none of their traces.
    pub async fn append_batch(
        &self,
        appends: Vec<BatchAppend>,
    ) -> Result<Vec<Result<Appended, ClientError>>, ClientError> {
        let count = appends.len();
        let span = tracing::debug_span!(
            "eventstore.call",
            rpc.method = "CreateEvents",
            batch.size = count
        );
        let events = appends
            .into_iter()
            .map(|append| {
                let BatchAppend {
                    mut event,
                    expected_version,
                    parent,
                } = append;
                // Entered (synchronously) so that the span is started the way every span is
                // before its context is read.
                parent.in_scope(|| tracecontext::fill_metadata(&parent, &mut event.metadata));
                pb::CreateEventRequest {
                    event: Some(proto_event(event)),
                    expected_version,
                }
            })
            .collect();
        let request = pb::CreateEventsRequest { events };
        let call = async {
            let outcomes = self
                .grpc
                .clone()
                .create_events(request)
                .await
                .map_err(ClientError::from)?
                .into_inner()
                .outcomes;
            if outcomes.len() != count {
                return Err(ClientError::Other(format!(
                    "the event store answered {} outcomes for {count} events",
                    outcomes.len()
                )));
            }
            Ok(outcomes.into_iter().map(outcome).collect())
        };
        call.instrument(span).await
    }

    /// Every event of one aggregate, in version order (empty when it has none).
    pub async fn events(&self, aggregate_id: &str) -> Result<Vec<EventEnvelope>, ClientError> {
        self.events_from(aggregate_id, 1).await
    }

    /// The events of one aggregate from `from_version` on, in version order.
    pub async fn events_from(
        &self,
        aggregate_id: &str,
        from_version: i64,
    ) -> Result<Vec<EventEnvelope>, ClientError> {
        let span = rpc_span("GetEvents");
        span.record("order.id", aggregate_id);
        let request = pb::GetEventsRequest {
            aggregate_id: aggregate_id.to_owned(),
            from_version,
            ..Default::default()
        };
        let events = self.get_events(request, &span).await?;
        events.into_iter().map(envelope).collect()
    }

    /// Every event of one aggregate, like [`Self::events`], but the call belongs to no trace: a
    /// debug span, no trace context sent. For a caller that reads an aggregate to learn whether it
    /// has anything to do and which trace that work would join (the deadline watcher), so that each
    /// look does not start a trace of its own.
    pub async fn events_untraced(
        &self,
        aggregate_id: &str,
    ) -> Result<Vec<EventEnvelope>, ClientError> {
        let span = tracing::debug_span!(
            "eventstore.call",
            rpc.method = "GetEvents",
            order.id = aggregate_id
        );
        let request = pb::GetEventsRequest {
            aggregate_id: aggregate_id.to_owned(),
            from_version: 1,
            ..Default::default()
        };
        let call = async {
            let response = self
                .grpc
                .clone()
                .get_events(request)
                .await
                .map_err(ClientError::from)?;
            response
                .into_inner()
                .events
                .into_iter()
                .map(envelope)
                .collect()
        };
        call.instrument(span).await
    }

    /// One event by id.
    pub async fn event(&self, event_id: Uuid) -> Result<Option<EventEnvelope>, ClientError> {
        let span = rpc_span("GetEvents");
        span.record("event.id", tracing::field::display(event_id));
        let request = pb::GetEventsRequest {
            event_id: event_id.to_string(),
            ..Default::default()
        };
        let events = self.get_events(request, &span).await?;
        events.into_iter().next().map(envelope).transpose()
    }

    /// One `GetEvents` call, in `span`.
    async fn get_events(
        &self,
        request: pb::GetEventsRequest,
        span: &tracing::Span,
    ) -> Result<Vec<pb::Event>, ClientError> {
        let call = async {
            let response = self
                .grpc
                .clone()
                .get_events(traced(request, span))
                .await
                .map_err(|status| failed(span, status))?;
            Ok(response.into_inner().events)
        };
        call.instrument(span.clone()).await
    }
}

/// One event of [`EventStoreClient::append_batch`].
#[derive(Debug, Clone)]
pub struct BatchAppend {
    pub event: NewEvent,
    /// The version the aggregate must be at.
    pub expected_version: i64,
    /// The span whose trace the event continues.
    pub parent: tracing::Span,
}

/// An event to append, as the contract has it.
fn proto_event(event: NewEvent) -> pb::Event {
    pb::Event {
        event_id: event.event_id.to_string(),
        event_type: event.event_type,
        aggregate_id: event.aggregate_id,
        aggregate_type: event.aggregate_type,
        event_data: event.data.to_string(),
        stream: STREAM.to_owned(),
        metadata: event.metadata.into_iter().collect(),
        ..Default::default()
    }
}

/// One event's outcome of a `CreateEvents` call, as the same errors `CreateEvent` gives.
fn outcome(outcome: pb::AppendOutcome) -> Result<Appended, ClientError> {
    match tonic::Code::from_i32(outcome.code) {
        tonic::Code::Ok => Ok(Appended {
            version: outcome.aggregate_version,
            duplicate: outcome.duplicate,
        }),
        code => Err(ClientError::from(tonic::Status::new(code, outcome.message))),
    }
}

/// The CLIENT span of one event store call (OpenTelemetry RPC conventions).
fn rpc_span(method: &'static str) -> tracing::Span {
    tracing::info_span!(
        "eventstore.call",
        otel.name = format!("{RPC_SERVICE}/{method}"),
        otel.kind = "client",
        rpc.system = "grpc",
        rpc.service = RPC_SERVICE,
        rpc.method = method,
        rpc.grpc.status_code = tracing::field::Empty,
        event.id = tracing::field::Empty,
        event.type = tracing::field::Empty,
        order.id = tracing::field::Empty,
        expected_version = tracing::field::Empty,
        aggregate.version = tracing::field::Empty,
    )
}

/// The gRPC service name, as in `proto/eventstore.proto`.
const RPC_SERVICE: &str = "eventstore.EventStore";

/// A request carrying `span`'s trace context in its metadata.
fn traced<T>(message: T, span: &tracing::Span) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    tracecontext::inject(
        span,
        &mut tracecontext::GrpcInjector(request.metadata_mut()),
    );
    request
}

/// Records a failed call on its span; refusals the caller handles (conflicts) are not errors.
fn failed(span: &tracing::Span, status: tonic::Status) -> ClientError {
    span.record("rpc.grpc.status_code", status.code() as i32);
    let error = ClientError::from(status);
    if matches!(error, ClientError::Unavailable(_) | ClientError::Other(_)) {
        tracecontext::mark_error(span, error.to_string());
    }
    error
}

/// Converts an event read from the store into the envelope the rest of the pipeline uses.
pub fn envelope(event: pb::Event) -> Result<EventEnvelope, ClientError> {
    let bad = |what: &str| ClientError::Other(format!("the event store sent an event with {what}"));
    let created_at = event
        .created_at
        .and_then(|t| {
            time::OffsetDateTime::from_unix_timestamp_nanos(
                i128::from(t.seconds) * 1_000_000_000 + i128::from(t.nanos),
            )
            .ok()
        })
        .ok_or_else(|| bad("no valid created_at"))?;
    Ok(EventEnvelope {
        event_id: Uuid::parse_str(&event.event_id).map_err(|_| bad("an invalid event_id"))?,
        event_type: event.event_type,
        aggregate_id: event.aggregate_id,
        aggregate_type: event.aggregate_type,
        aggregate_version: event.aggregate_version,
        stream: event.stream,
        event_data: serde_json::from_str(&event.event_data)
            .map_err(|_| bad("event_data that is not JSON"))?,
        metadata: event.metadata.into_iter().collect(),
        created_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_map_to_what_a_caller_can_do() {
        assert!(matches!(
            ClientError::from(tonic::Status::failed_precondition("x")),
            ClientError::Conflict(_)
        ));
        assert!(matches!(
            ClientError::from(tonic::Status::already_exists("x")),
            ClientError::AlreadyExists(_)
        ));
        assert!(ClientError::from(tonic::Status::unavailable("x")).is_transient());
        assert!(!ClientError::from(tonic::Status::invalid_argument("x")).is_transient());
    }

    #[test]
    fn a_bad_url_is_refused_at_start() {
        assert!(EventStoreClient::connect_lazy("not a url", Duration::from_secs(1)).is_err());
    }

    #[tokio::test]
    async fn tls_settings_that_disagree_with_the_scheme_name_the_variable() {
        let timeout = Duration::from_secs(1);
        let no_tls = ClientTls::default();
        let cases = [
            ("https://127.0.0.1:50051", no_tls.clone()),
            (
                "http://127.0.0.1:50051",
                ClientTls::with_ca("/nowhere/ca.pem"),
            ),
            (
                "https://127.0.0.1:50051",
                ClientTls::with_ca("/nowhere/ca.pem"),
            ),
        ];
        for (url, tls) in cases {
            let err = EventStoreClient::connect_lazy_with(url, timeout, &tls)
                .err()
                .unwrap_or_else(|| panic!("{url} with {tls:?} is refused"));
            assert!(err.to_string().contains(TLS_CA_VARIABLE), "{err:#}");
        }
        EventStoreClient::connect_lazy_with("http://127.0.0.1:50051", timeout, &no_tls)
            .expect("plaintext needs no CA");
    }

    #[tokio::test]
    async fn a_client_certificate_needs_its_key_and_an_https_url_and_names_the_variables() {
        let certs = testkit::tls::Certificates::make().expect("test certificates");
        let (cert, key) = certs
            .make_client("ordersvc", testkit::tls::Signer::Ca)
            .expect("client certificate");
        let timeout = Duration::from_secs(1);
        let https = "https://127.0.0.1:50051";
        let ca = ClientTls::with_ca(certs.ca());
        let only_cert = ClientTls {
            client_cert: Some(cert.clone()),
            ..ca.clone()
        };
        let only_key = ClientTls {
            client_key: Some(key.clone()),
            ..ca.clone()
        };
        for (tls, variable) in [
            (&only_cert, TLS_CLIENT_KEY_VARIABLE),
            (&only_key, TLS_CLIENT_CERT_VARIABLE),
        ] {
            let err = EventStoreClient::connect_lazy_with(https, timeout, tls)
                .err()
                .unwrap_or_else(|| panic!("{tls:?} is refused"));
            assert!(err.to_string().contains(variable), "{err:#}");
        }
        let plaintext = ClientTls::default().with_client_identity(&cert, &key);
        let err =
            EventStoreClient::connect_lazy_with("http://127.0.0.1:50051", timeout, &plaintext)
                .err()
                .expect("a client certificate over plaintext is refused");
        assert!(
            err.to_string().contains(TLS_CLIENT_CERT_VARIABLE),
            "{err:#}"
        );
        // The key of another certificate.
        let wrong_key = ca.clone().with_client_identity(&cert, certs.server_key());
        let err = EventStoreClient::connect_lazy_with(https, timeout, &wrong_key)
            .err()
            .expect("a key that does not match is refused");
        assert!(err.to_string().contains(TLS_CLIENT_KEY_VARIABLE), "{err:#}");
        EventStoreClient::connect_lazy_with(https, timeout, &ca.with_client_identity(&cert, &key))
            .expect("certificate, key, CA and https");
    }

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        tls: ClientTls,
    }

    #[tokio::test]
    async fn a_tls_ca_that_holds_no_readable_certificate_is_refused_by_the_command_line() {
        use clap::Parser as _;
        let dir = tempfile::tempdir().expect("temporary folder");
        let not_pem = dir.path().join("ca.txt");
        std::fs::write(&not_pem, "no certificate here\n").expect("writing");
        let missing = dir.path().join("missing.pem");
        for bad in [&not_pem, &missing] {
            let err = Cli::try_parse_from(["x", "--eventstore-tls-ca", &bad.display().to_string()])
                .expect_err("refused");
            assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation, "{err}");
            assert!(err.to_string().contains(TLS_CA_VARIABLE), "{err}");
        }
        let ca = dir.path().join("ca.pem");
        std::fs::write(
            &ca,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .expect("writing");
        let cli = Cli::try_parse_from(["x", "--eventstore-tls-ca", &ca.display().to_string()])
            .expect("a PEM certificate is taken");
        assert_eq!(cli.tls, ClientTls::with_ca(&ca));
        // Empty, as an unset variable: no CA, and plaintext works.
        let cli = Cli::try_parse_from(["x", "--eventstore-tls-ca", ""]).expect("empty is none");
        EventStoreClient::connect_lazy_with(
            "http://127.0.0.1:50051",
            Duration::from_secs(1),
            &cli.tls,
        )
        .expect("an empty CA is no CA");
    }
}
