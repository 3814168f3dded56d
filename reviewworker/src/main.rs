use std::process::ExitCode;

use clap::Parser as _;
use pipeline_runtime::{shutdown, telemetry};
use reviewworker::{App, Config};

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    // Declared first so it is dropped last: queued spans are flushed after everything else stopped.
    let _telemetry = match telemetry::init("reviewworker", &config.telemetry) {
        Ok(guard) => guard,
        Err(err) => {
            eprintln!("reviewworker: {err:#}");
            return ExitCode::FAILURE;
        }
    };
    let app = match App::build(config).await {
        Ok(app) => app,
        Err(err) => {
            tracing::error!("cannot start: {err:#}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!("reviewworker consuming");
    match app.run_until_stopped(shutdown::signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("stopped with an error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
