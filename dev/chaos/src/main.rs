//! `chaos`: the whole pipeline under load while every process is killed and restarted, then the
//! invariants. Exits 0 when every invariant holds, 1 when one does not, 2 when the run could not
//! be done. Needs the workspace's binaries beside it (`cargo build --workspace --bins`);
//! `scripts/chaos` builds them and runs this.

use std::io::{IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use chaos::{Config, Schedule};
use clap::Parser;

/// Runs the pipeline under load while killing and restarting every process, then checks the
/// invariants and prints a report.
#[derive(Debug, Parser)]
#[command(name = "chaos")]
struct Cli {
    /// How long orders are offered (`90s`, `3m`, or seconds); the fault schedule fits into it.
    #[arg(long, default_value = "3m", value_parser = parse_duration)]
    duration: Duration,
    /// Orders offered per second.
    #[arg(long, default_value_t = 10.0, value_parser = parse_rate)]
    rate: f64,
    /// `full`: every process killed alone, overlapping faults and a frozen worker, repeated while
    /// the duration leaves room; `short`: a frozen worker and one kill of every process;
    /// `deadlines`: 3 s saga deadlines, each worker frozen past them, the watcher and the event
    /// store killed while they fall; `db`: the pipeline on three PostgreSQL nodes under Patroni,
    /// its leader node, synchronous standby, an etcd member and the leader's PostgreSQL alone
    /// killed, and planned switchovers, repeated while the duration leaves room.
    #[arg(long, default_value = "full", value_parser = ["full", "short", "deadlines", "db"])]
    schedule: String,
    /// Multiplies how long each process stays down (1.5 to 5 s at 1).
    #[arg(long, default_value_t = 1.0, value_parser = parse_scale)]
    down_scale: f64,
    /// Seed of the orders and the schedule's choices (default: a random one, printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Customers the orders are spread over (default: one per 15 orders, at least 50).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    customers: Option<u32>,
    /// After the load, how long to wait for the pipeline to drain.
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    drain_timeout: Duration,
    /// Copy the processes' logs here when an invariant fails (default: a `chaos-<seed>` folder in
    /// the system's temporary folder).
    #[arg(long)]
    logs: Option<PathBuf>,
    /// Copy the logs also when every invariant holds.
    #[arg(long)]
    keep_logs: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// The project's one duration grammar (`90s`, `1500ms`, `3m`), between 0 and 24 h.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let duration = order_domain::parse_duration(text)?;
    if duration.is_zero() || duration > Duration::from_secs(86_400) {
        return Err(format!("{text:?} is not a duration between 0 and 24h"));
    }
    Ok(duration)
}

fn parse_scale(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(scale) if scale.is_finite() && scale > 0.0 && scale <= 100.0 => Ok(scale),
        _ => Err(format!("{text:?} is not a factor above 0 and at most 100")),
    }
}

fn parse_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 && rate <= 10_000.0 => Ok(rate),
        _ => Err(format!(
            "{text:?} is not a rate of orders per second (0 to 10000)"
        )),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // Progress goes to stderr so that stdout holds the report alone (JSON with --json).
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,chaos=info,e2e_tests=info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    let seed = cli.seed.unwrap_or_else(rand::random);
    eprintln!(
        "chaos: seed {seed}, {:.0} s at {} orders/s",
        cli.duration.as_secs_f64(),
        cli.rate
    );
    let schedule = match cli.schedule.as_str() {
        "short" => Schedule::Short,
        "deadlines" => Schedule::Deadlines,
        "db" => Schedule::Db,
        _ => Schedule::Full,
    };
    let deadlines = (schedule == Schedule::Deadlines).then_some(chaos::SHORT_DEADLINES);
    let config = Config {
        schedule,
        down_scale: cli.down_scale,
        customers: cli.customers,
        drain_timeout: cli.drain_timeout,
        logs_dir: Some(
            cli.logs
                .unwrap_or_else(|| std::env::temp_dir().join(format!("chaos-{seed}"))),
        ),
        keep_logs_always: cli.keep_logs,
        deadlines,
        ..Config::new(cli.duration, cli.rate, seed)
    };
    let report = match chaos::run(config).await {
        Ok(report) => report,
        Err(error) => {
            eprintln!("chaos: the run could not be done: {error:#}");
            return ExitCode::from(2);
        }
    };
    let text = if cli.json {
        match serde_json::to_string_pretty(&report) {
            Ok(json) => json,
            Err(error) => {
                eprintln!("chaos: cannot write the report as JSON: {error}");
                return ExitCode::from(2);
            }
        }
    } else {
        report.to_string()
    };
    let mut stdout = std::io::stdout().lock();
    if let Err(error) = writeln!(stdout, "{text}").and_then(|()| stdout.flush()) {
        eprintln!("chaos: cannot print the report: {error}");
        return ExitCode::from(2);
    }
    if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations_take_seconds_minutes_and_hours() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert!(parse_duration("90").is_err(), "a bare number is refused");
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("3m"), Ok(Duration::from_secs(180)));
        assert_eq!(parse_duration("1.5m"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("3 days").is_err());
        assert!(parse_duration("-1").is_err());
    }

    #[test]
    fn a_rate_is_a_positive_number() {
        assert_eq!(parse_rate("2.5"), Ok(2.5));
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("NaN").is_err());
    }
}
