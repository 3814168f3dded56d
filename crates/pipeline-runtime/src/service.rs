//! The start and stop of a service binary, so that every `main.rs` reports them the same way:
//! one line on stderr (or one `tracing` error) and an exit code, never a panic.

use std::future::Future;
use std::process::ExitCode;

use crate::telemetry::{self, Telemetry, TelemetryConfig};

/// [`telemetry::init`] for `main`: a bad configuration is printed as `<name>: <causes>` and becomes
/// the exit code. Hold the guard for the whole of `main`, declared first, so it is dropped last.
pub fn telemetry(name: &str, config: &TelemetryConfig) -> Result<Telemetry, ExitCode> {
    telemetry::init(name, config).map_err(|err| {
        eprintln!("{name}: {err:#}");
        ExitCode::FAILURE
    })
}

/// Builds the app, tells `started` about it, then runs it (until its shutdown signal) and logs how
/// it ended: `cannot start` or `stopped with an error`, with the causes on one line.
pub async fn run<A, R>(
    build: impl Future<Output = anyhow::Result<A>>,
    started: impl FnOnce(&A),
    run: impl FnOnce(A) -> R,
) -> ExitCode
where
    R: Future<Output = anyhow::Result<()>>,
{
    let app = match build.await {
        Ok(app) => app,
        Err(err) => {
            tracing::error!("cannot start: {err:#}");
            return ExitCode::FAILURE;
        }
    };
    started(&app);
    match run(app).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("stopped with an error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
