use std::process::ExitCode;

use clap::Parser as _;
use pipeline_runtime::{shutdown, telemetry};
use reviewworker::{App, Config};

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    telemetry::init("reviewworker");
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
