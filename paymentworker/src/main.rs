use std::process::ExitCode;

use clap::Parser as _;
use paymentworker::{App, Config};
use pipeline_runtime::{shutdown, telemetry};

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    telemetry::init("paymentworker");
    let app = match App::build(config).await {
        Ok(app) => app,
        Err(err) => {
            tracing::error!("cannot start: {err:#}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!("paymentworker consuming");
    match app.run_until_stopped(shutdown::signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("stopped with an error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
