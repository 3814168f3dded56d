//! Logging and tracing set-up shared by every binary: `tracing` to stderr (filtered by `RUST_LOG`)
//! and, through `tracing-opentelemetry`, spans exported in batches to Zipkin (`ZIPKIN_ENDPOINT`).
//!
//! Export never slows a service down: finished spans go into a bounded queue that a background
//! thread sends to Zipkin; when Zipkin is unreachable or slow the queue fills and further spans are
//! dropped, and a warning is logged at most once a minute. Spans are created (and W3C trace context
//! propagated) even when export is off, so trace ids still flow through the pipeline.

// opentelemetry-zipkin 0.33 is marked deprecated in favour of OTLP; the design (and the Zipkin
// servers our users run, whose OTLP intake is an add-on) asks for Zipkin's own v2 JSON API.
#![allow(deprecated)]

use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider, SpanData, SpanExporter,
};
use opentelemetry_zipkin::ZipkinExporter;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::{EnvFilter, Layer as _, fmt, prelude::*};

/// Zipkin's span collector on this machine: what `ZIPKIN_ENDPOINT` defaults to.
pub const DEFAULT_ZIPKIN_ENDPOINT: &str = "http://127.0.0.1:9411/api/v2/spans";
/// One upload to Zipkin may take this long; meanwhile new spans queue (and overflow is dropped).
const EXPORT_TIMEOUT: Duration = Duration::from_secs(3);
/// Export failures are logged at most this often.
const WARN_EVERY: Duration = Duration::from_secs(60);
/// Spans waiting for export, at most: the SDK's default (`OTEL_BSP_MAX_QUEUE_SIZE`).
const MAX_QUEUE: u32 = 2048;
/// How long finished spans wait to be sent in one batch, in milliseconds: the SDK's default
/// (`OTEL_BSP_SCHEDULE_DELAY`).
const SCHEDULE_DELAY_MS: u64 = 5000;
/// How long the final flush on exit may take.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// Where spans go. Every service flattens this into its configuration.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct TelemetryConfig {
    /// Zipkin v2 span collector (`ZIPKIN_ENDPOINT`, default
    /// http://127.0.0.1:9411/api/v2/spans); an empty value turns span export off.
    #[arg(
        long,
        env = "ZIPKIN_ENDPOINT",
        value_name = "ZIPKIN_ENDPOINT",
        default_value = DEFAULT_ZIPKIN_ENDPOINT,
        global = true
    )]
    pub zipkin_endpoint: String,

    /// Finished spans waiting for export, at most (`OTEL_BSP_MAX_QUEUE_SIZE`, default 2048); while
    /// Zipkin is slow or away, more are dropped.
    #[arg(
        long = "otel-bsp-max-queue-size",
        env = "OTEL_BSP_MAX_QUEUE_SIZE",
        value_name = "OTEL_BSP_MAX_QUEUE_SIZE",
        default_value_t = MAX_QUEUE,
        value_parser = clap::value_parser!(u32).range(1..=10_000_000),
        global = true
    )]
    pub max_queue_size: u32,

    /// How long finished spans wait to be sent together, in milliseconds
    /// (`OTEL_BSP_SCHEDULE_DELAY`, default 5000).
    #[arg(
        long = "otel-bsp-schedule-delay",
        env = "OTEL_BSP_SCHEDULE_DELAY",
        value_name = "OTEL_BSP_SCHEDULE_DELAY",
        default_value_t = SCHEDULE_DELAY_MS,
        value_parser = clap::value_parser!(u64).range(1..=3_600_000),
        global = true
    )]
    pub schedule_delay_ms: u64,
}

impl Default for TelemetryConfig {
    /// The command line's defaults, as in an empty environment.
    fn default() -> Self {
        crate::cli::arg_defaults()
    }
}

impl TelemetryConfig {
    /// Export off: spans are still created and propagated, but sent nowhere.
    pub fn off() -> Self {
        Self {
            zipkin_endpoint: String::new(),
            ..Self::default()
        }
    }

    /// The collector URL, `None` when export is off; an error names the variable.
    pub fn endpoint(&self) -> anyhow::Result<Option<&str>> {
        let endpoint = self.zipkin_endpoint.trim();
        if endpoint.is_empty() {
            return Ok(None);
        }
        let url = url::Url::parse(endpoint)
            .with_context(|| format!("ZIPKIN_ENDPOINT {endpoint:?} is not a URL"))?;
        anyhow::ensure!(
            url.scheme() == "http" && url.host().is_some(),
            "ZIPKIN_ENDPOINT {endpoint:?} must be an http:// URL such as {DEFAULT_ZIPKIN_ENDPOINT}"
        );
        Ok(Some(endpoint))
    }
}

/// Keeps span export running; dropping it flushes what is queued and stops the exporter. Hold it
/// for the whole of `main`, declared first, so it is dropped last.
#[must_use = "dropping the guard stops span export"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Flushes the spans still queued (bounded in time) and stops export.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(provider) = self.provider.take() {
            // Zipkin down at exit: the spans are lost, the exit is not delayed for long.
            let _ = provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT);
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Installs the `tracing` subscriber of `service_name`: logs to stderr filtered by `RUST_LOG`
/// (default `info`), and spans at `info` and above to OpenTelemetry, exported to Zipkin unless
/// `config` turns export off. The service name of the spans is `service_name`.
///
/// Fails only on a bad `ZIPKIN_ENDPOINT`. Safe to call more than once (tests start several services
/// in one process): later calls install nothing and return an inert guard.
pub fn init(service_name: &str, config: &TelemetryConfig) -> anyhow::Result<Telemetry> {
    let endpoint = config.endpoint()?;
    let resource = Resource::builder()
        .with_service_name(service_name.to_owned())
        .build();
    let mut provider = SdkTracerProvider::builder().with_resource(resource);
    if let Some(endpoint) = endpoint {
        let exporter = QuietExporter {
            inner: zipkin_exporter(endpoint, service_name)?,
            endpoint: endpoint.to_owned(),
            state: Mutex::new(ExportState::default()),
        };
        // Both set here, from the configuration: the SDK's own reading of these variables ignores
        // a bad value.
        let batch = BatchConfigBuilder::default()
            .with_max_queue_size(usize::try_from(config.max_queue_size).unwrap_or(usize::MAX))
            .with_scheduled_delay(Duration::from_millis(config.schedule_delay_ms))
            .build();
        provider = provider.with_span_processor(
            BatchSpanProcessor::builder(exporter)
                .with_batch_config(batch)
                .build(),
        );
    }
    let provider = provider.build();
    let tracer = provider.tracer(service_name.to_owned());

    let filter = log_filter(std::env::var("RUST_LOG").ok().as_deref());
    // Colours only on a terminal: a log file or a journal gets plain text to search.
    let logs = fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(true)
        .with_filter(filter);
    // Spans are traced whatever RUST_LOG says, so the trace context keeps flowing when logs are
    // turned down; debug spans (background loops) stay out of Zipkin.
    let spans = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_location(false)
        .with_threads(false)
        .with_tracked_inactivity(false)
        .with_filter(LevelFilter::INFO);
    let installed = tracing_subscriber::registry()
        .with(logs)
        .with(spans)
        .try_init()
        .is_ok();
    if !installed {
        let _ = provider.shutdown();
        return Ok(Telemetry { provider: None });
    }
    tracing::info!(
        service.name = service_name,
        zipkin.endpoint = endpoint.unwrap_or("off"),
        "telemetry initialised"
    );
    Ok(Telemetry {
        provider: Some(provider),
    })
}

/// The blocking HTTP client must be built (and later used) outside the async runtime: it runs a
/// runtime of its own. The batch processor exports from its own thread.
fn zipkin_exporter(endpoint: &str, service_name: &str) -> anyhow::Result<ZipkinExporter> {
    let endpoint = endpoint.to_owned();
    let service = service_name.to_owned();
    std::thread::spawn(move || {
        let client = reqwest::blocking::Client::builder()
            .timeout(EXPORT_TIMEOUT)
            .connect_timeout(EXPORT_TIMEOUT)
            .build()
            .context("building the Zipkin HTTP client")?;
        ZipkinExporter::builder()
            .with_http_client(ZipkinFixups { client, service })
            .with_collector_endpoint(endpoint)
            .build()
            .context("ZIPKIN_ENDPOINT")
    })
    .join()
    .map_err(|_| anyhow::anyhow!("building the Zipkin exporter panicked"))?
}

/// Repairs two faults of opentelemetry-zipkin 0.33 before the spans leave: it sends `localEndpoint`
/// without `serviceName` (it ignores the provider's resource), which Zipkin shows as "unknown", and
/// gives root spans the parent `0000000000000000` instead of none.
#[derive(Debug)]
struct ZipkinFixups {
    client: reqwest::blocking::Client,
    service: String,
}

#[async_trait::async_trait]
impl HttpClient for ZipkinFixups {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let (parts, body) = request.into_parts();
        let body = zipkin_fixups(&body, &self.service).unwrap_or(body);
        self.client
            .send_bytes(Request::from_parts(parts, body))
            .await
    }
}

/// Sets `localEndpoint.serviceName` on every span of a Zipkin v2 JSON array and drops the all-zero
/// `parentId` of root spans.
fn zipkin_fixups(body: &[u8], service: &str) -> Option<Bytes> {
    let mut spans: Vec<serde_json::Value> = serde_json::from_slice(body).ok()?;
    for span in &mut spans {
        let span = span.as_object_mut()?;
        if span
            .get("parentId")
            .and_then(serde_json::Value::as_str)
            .is_some_and(|id| id.bytes().all(|b| b == b'0'))
        {
            span.remove("parentId");
        }
        let endpoint = span
            .entry("localEndpoint")
            .or_insert_with(|| serde_json::json!({}));
        endpoint
            .as_object_mut()?
            .insert("serviceName".to_owned(), service.into());
    }
    serde_json::to_vec(&spans).ok().map(Bytes::from)
}

#[derive(Debug, Default)]
struct ExportState {
    failing: bool,
    last_warning: Option<Instant>,
    dropped: usize,
}

/// Turns export failures into one warning a minute (with the count of spans dropped meanwhile)
/// instead of an error per batch.
#[derive(Debug)]
struct QuietExporter<E> {
    inner: E,
    endpoint: String,
    state: Mutex<ExportState>,
}

impl<E: SpanExporter> SpanExporter for QuietExporter<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len();
        let result = self.inner.export(batch).await;
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match result {
            Ok(()) => {
                if state.failing {
                    state.failing = false;
                    tracing::info!(zipkin.endpoint = %self.endpoint, "spans reach Zipkin again");
                }
            }
            Err(err) => {
                state.failing = true;
                state.dropped += spans;
                if state
                    .last_warning
                    .is_none_or(|at| at.elapsed() >= WARN_EVERY)
                {
                    tracing::warn!(
                        zipkin.endpoint = %self.endpoint,
                        dropped_spans = state.dropped,
                        error = %err,
                        "cannot export spans to Zipkin; dropping them (logged at most once a minute)"
                    );
                    state.last_warning = Some(Instant::now());
                    state.dropped = 0;
                }
            }
        }
        // Reported here, once a minute; the SDK would log every failed batch.
        Ok(())
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// `RUST_LOG` (default `info`), with PostgreSQL's notices lowered to errors unless it names sqlx:
/// after a serialization failure on COMMIT (retried, see `db::retry`) sqlx rolls the connection
/// back, and PostgreSQL answers each such rollback with the notice "there is no transaction in
/// progress", a warning that says nothing about the service.
fn log_filter(rust_log: Option<&str>) -> EnvFilter {
    let directives = rust_log.filter(|value| !value.trim().is_empty());
    let mut filter = directives
        .and_then(|value| EnvFilter::try_new(value).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    if !directives.is_some_and(|value| value.contains("sqlx"))
        && let Ok(quiet) = "sqlx::postgres::notice=error".parse()
    {
        filter = filter.add_directive(quiet);
    }
    filter
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_notices_are_quiet_unless_rust_log_names_sqlx() {
        for rust_log in [None, Some(""), Some("debug"), Some("warn,eventstore=trace")] {
            let filter = log_filter(rust_log).to_string();
            assert!(
                filter.contains("sqlx::postgres::notice=error"),
                "{rust_log:?} → {filter}"
            );
        }
        let filter = log_filter(Some("info,sqlx=debug")).to_string();
        assert!(!filter.contains("notice=error"), "{filter}");
        assert!(
            log_filter(Some("not a [valid filter"))
                .to_string()
                .contains("info")
        );
    }

    #[test]
    fn an_empty_endpoint_turns_export_off() {
        assert_eq!(TelemetryConfig::off().endpoint().expect("valid"), None);
        assert_eq!(
            TelemetryConfig::default().endpoint().expect("valid"),
            Some(DEFAULT_ZIPKIN_ENDPOINT)
        );
    }

    #[test]
    fn a_bad_endpoint_names_the_variable() {
        for bad in ["not a url", "https://zipkin:9411/api/v2/spans", "ftp://x/"] {
            let config = TelemetryConfig {
                zipkin_endpoint: bad.to_owned(),
                ..TelemetryConfig::default()
            };
            let err = config.endpoint().expect_err("refused");
            assert!(err.to_string().contains("ZIPKIN_ENDPOINT"), "{err}");
        }
    }

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        telemetry: TelemetryConfig,
    }

    #[test]
    fn the_batch_settings_default_to_the_sdk_s_and_bad_ones_are_refused_naming_the_variable() {
        use clap::Parser as _;
        let cli = Cli::try_parse_from(["x"]).expect("defaults");
        assert_eq!(cli.telemetry, TelemetryConfig::default());
        assert_eq!(
            (
                cli.telemetry.max_queue_size,
                cli.telemetry.schedule_delay_ms
            ),
            (2048, 5000)
        );
        for (flag, variable) in [
            ("--otel-bsp-max-queue-size", "OTEL_BSP_MAX_QUEUE_SIZE"),
            ("--otel-bsp-schedule-delay", "OTEL_BSP_SCHEDULE_DELAY"),
        ] {
            for bad in ["0", "lots", "-5", "1.5", ""] {
                let err = Cli::try_parse_from(["x".to_owned(), format!("{flag}={bad}")])
                    .expect_err("refused");
                assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation, "{err}");
                assert!(err.to_string().contains(variable), "{variable}: {err}");
            }
        }
        let cli = Cli::try_parse_from(["x", "--otel-bsp-max-queue-size", "100"]).expect("valid");
        assert_eq!(cli.telemetry.max_queue_size, 100);
    }

    #[test]
    fn exported_spans_name_their_service_and_roots_have_no_parent() {
        let body = br#"[{"id":"1","parentId":"0000000000000000","localEndpoint":{}},
                        {"id":"2","parentId":"00f067aa0ba902b7"}]"#;
        let named = zipkin_fixups(body, "ordersvc").expect("JSON");
        let spans: Vec<serde_json::Value> = serde_json::from_slice(&named).expect("JSON");
        for span in &spans {
            assert_eq!(span["localEndpoint"]["serviceName"], "ordersvc");
        }
        assert!(spans[0].get("parentId").is_none(), "a root has no parent");
        assert_eq!(spans[1]["parentId"], "00f067aa0ba902b7");
    }
}
