//! ordersvc: the HTTP order API. Everything but start-up lives in the library.

use std::process::ExitCode;

use clap::Parser as _;
use ordersvc::{App, Config};
use pipeline_runtime::{shutdown, telemetry};

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    // Declared first so it is dropped last: queued spans are flushed after everything else stopped.
    let _telemetry = match telemetry::init("ordersvc", &config.telemetry) {
        Ok(guard) => guard,
        Err(err) => {
            eprintln!("ordersvc: {err:#}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(?config, "starting");
    match run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("ordersvc: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
    let app = App::build(config).await?;
    app.run_until_stopped(shutdown::signal()).await
}
