//! The watcher's configuration: environment variables with `--flags` of the same meaning.

use std::time::Duration;

use order_domain::Deadlines;
use pipeline_runtime::eventstore::ClientTls;
use pipeline_runtime::service::RuntimeArgs;
use pipeline_runtime::telemetry::TelemetryConfig;
use secrecy::SecretString;

/// Default of `ORDERS_DATABASE_URL`, as every service that reads ordersdb has it.
pub const DEFAULT_ORDERS_DATABASE_URL: &str =
    "postgresql://root@127.0.0.1:26257/ordersdb?sslmode=disable";
/// Default of `EVENTSTORE_URL`.
pub const DEFAULT_EVENTSTORE_URL: &str = "http://127.0.0.1:50051";

/// The shortest deadline accepted: below a second, an order would be cancelled before a healthy
/// pipeline pays it.
pub const MIN_DEADLINE: Duration = Duration::from_secs(1);
/// The longest deadline accepted.
pub const MAX_DEADLINE: Duration = Duration::from_secs(7 * 24 * 3600);

/// How long each step of the saga may take; flattened into the watcher's configuration and into
/// `orderctl deadlines`, so both read the same variables with the same defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::Args)]
pub struct DeadlineArgs {
    /// How long an order may stay Pending, waiting for its payment, before it is cancelled
    /// (`PAYMENT_DEADLINE`): a number with a unit, `30s`, `1500ms`, `2m`, `1h`.
    #[arg(
        long,
        env = "PAYMENT_DEADLINE",
        default_value = "30s",
        value_parser = parse_payment_deadline
    )]
    pub payment_deadline: Duration,

    /// How long an order may stay Paid, waiting for its review, before it is cancelled and
    /// refunded (`REVIEW_DEADLINE`): `60s`, `2m`, `1500ms`, `1h`.
    #[arg(
        long,
        env = "REVIEW_DEADLINE",
        default_value = "60s",
        value_parser = parse_review_deadline
    )]
    pub review_deadline: Duration,
}

impl DeadlineArgs {
    pub fn deadlines(&self) -> Deadlines {
        Deadlines {
            payment: self.payment_deadline,
            review: self.review_deadline,
        }
    }
}

impl Default for DeadlineArgs {
    /// The command line's defaults, as in an empty environment.
    fn default() -> Self {
        pipeline_runtime::cli::arg_defaults()
    }
}

/// Everything deadlinewatcher reads at start. `--help` lists the variables; `Debug` hides the
/// database URL.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "deadlinewatcher",
    version,
    about = "Cancels orders whose payment or review missed its deadline"
)]
pub struct Config {
    #[command(flatten)]
    pub deadlines: DeadlineArgs,

    /// How often the read model is scanned for overdue orders (`DEADLINE_SCAN_INTERVAL`): an order
    /// is cancelled at most this long after its deadline. `1s`, `500ms`, `5s`.
    #[arg(
        long,
        env = "DEADLINE_SCAN_INTERVAL",
        default_value = "1s",
        value_parser = parse_scan_interval
    )]
    pub scan_interval: Duration,

    /// The event store's gRPC endpoint (`EVENTSTORE_URL`): orders are read and cancelled there.
    #[arg(long, env = "EVENTSTORE_URL", default_value = DEFAULT_EVENTSTORE_URL)]
    pub eventstore_url: String,

    /// How the event store's certificate is checked (`EVENTSTORE_TLS_CA`).
    #[command(flatten)]
    pub eventstore_tls: ClientTls,

    /// The read model (`ORDERS_DATABASE_URL`), where the open orders are found; read only (the
    /// dev stack gives the watcher a role that may only read `orders`).
    #[arg(
        long,
        env = "ORDERS_DATABASE_URL",
        default_value = DEFAULT_ORDERS_DATABASE_URL,
        hide_env_values = true
    )]
    pub orders_database_url: SecretString,

    /// Span export (`ZIPKIN_ENDPOINT`).
    #[command(flatten)]
    pub telemetry: TelemetryConfig,

    /// The threads that run the service (`SERVICE_THREADS`).
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

impl Config {
    /// The command line's defaults (as in an empty environment), pointed at the given event store
    /// and read model (for tests and embedding).
    pub fn new(eventstore_url: impl Into<String>, orders_database_url: impl Into<String>) -> Self {
        let mut config: Self = pipeline_runtime::cli::defaults();
        config.eventstore_url = eventstore_url.into();
        config.orders_database_url = SecretString::from(orders_database_url.into());
        config
    }

    /// How long an event store call or a database connection may take.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(5)
    }
}

fn parse_payment_deadline(text: &str) -> Result<Duration, String> {
    parse_within("PAYMENT_DEADLINE", text, MIN_DEADLINE, MAX_DEADLINE)
}

fn parse_review_deadline(text: &str) -> Result<Duration, String> {
    parse_within("REVIEW_DEADLINE", text, MIN_DEADLINE, MAX_DEADLINE)
}

fn parse_scan_interval(text: &str) -> Result<Duration, String> {
    parse_within(
        "DEADLINE_SCAN_INTERVAL",
        text,
        Duration::from_millis(100),
        Duration::from_secs(3600),
    )
}

/// [`order_domain::parse_duration`] between `min` and `max`; the error names `variable`.
fn parse_within(
    variable: &str,
    text: &str,
    min: Duration,
    max: Duration,
) -> Result<Duration, String> {
    let duration =
        order_domain::parse_duration(text).map_err(|err| format!("{variable}: {err}"))?;
    if duration < min || duration > max {
        return Err(format!(
            "{variable} must be between {} and {}, not {text:?}",
            order_domain::format_duration(min),
            order_domain::format_duration(max)
        ));
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory as _, Parser as _};

    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        Config::command().debug_assert();
    }

    #[test]
    fn the_defaults_are_thirty_seconds_to_pay_and_a_minute_to_review() {
        // The domain's deadlines, which `orderctl` also reads, are the command line's.
        let config: Config = pipeline_runtime::cli::defaults();
        assert_eq!(config.deadlines.deadlines(), Deadlines::DEFAULT);
        assert_eq!(config.scan_interval, Duration::from_secs(1));
        assert_eq!(config.eventstore_url, DEFAULT_EVENTSTORE_URL);
    }

    #[test]
    fn new_is_the_command_line_with_only_the_endpoints_given() {
        let new = Config::new("http://es:50052", "postgresql://w@db:5432/orders");
        let parsed: Config = pipeline_runtime::cli::parse_without_env([
            "deadlinewatcher",
            "--eventstore-url=http://es:50052",
            "--orders-database-url=postgresql://w@db:5432/orders",
        ])
        .expect("parses");
        pipeline_runtime::cli::same_config(&new, &parsed, |c| vec![Some(&c.orders_database_url)])
            .expect("Config::new is the command line with only the endpoints given");
    }

    #[test]
    fn deadlines_take_the_usual_units() {
        let config = Config::try_parse_from([
            "deadlinewatcher",
            "--payment-deadline",
            "1500ms",
            "--review-deadline",
            "2m",
            "--scan-interval",
            "250ms",
        ])
        .expect("parses");
        assert_eq!(
            config.deadlines.payment_deadline,
            Duration::from_millis(1500)
        );
        assert_eq!(config.deadlines.review_deadline, Duration::from_secs(120));
        assert_eq!(config.scan_interval, Duration::from_millis(250));
    }

    #[test]
    fn a_bad_deadline_names_its_variable() {
        for (flag, value, variable) in [
            ("--payment-deadline", "30", "PAYMENT_DEADLINE"),
            ("--payment-deadline", "soon", "PAYMENT_DEADLINE"),
            ("--payment-deadline", "500ms", "PAYMENT_DEADLINE"),
            ("--review-deadline", "3 days", "REVIEW_DEADLINE"),
            ("--review-deadline", "8000h", "REVIEW_DEADLINE"),
            ("--scan-interval", "10ms", "DEADLINE_SCAN_INTERVAL"),
        ] {
            let err = Config::try_parse_from(["deadlinewatcher", flag, value])
                .expect_err("refused")
                .to_string();
            assert!(err.contains(variable), "{flag} {value}: {err}");
        }
    }

    #[test]
    fn debug_output_hides_the_database_password() {
        let config = Config::new(
            "http://127.0.0.1:50051",
            "postgresql://w:hunter2@db/ordersdb",
        );
        assert!(!format!("{config:?}").contains("hunter2"));
    }
}
