use std::process::ExitCode;

use clap::Parser as _;
use pipeline_runtime::{shutdown, telemetry};
use querymodelworker::{App, Cli, Command};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // Declared first so it is dropped last: queued spans are flushed after everything else stopped.
    let _telemetry = match telemetry::init(querymodelworker::WORKER, &cli.config.telemetry) {
        Ok(guard) => guard,
        Err(err) => {
            eprintln!("querymodelworker: {err:#}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => {
            let app = match App::build(cli.config).await {
                Ok(app) => app,
                Err(err) => {
                    tracing::error!("cannot start: {err:#}");
                    return ExitCode::FAILURE;
                }
            };
            tracing::info!("querymodelworker consuming");
            match app.run_until_stopped(shutdown::signal()).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    tracing::error!("stopped with an error: {err:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Rebuild => match querymodelworker::rebuild(&cli.config).await {
            Ok(report) => {
                tracing::info!(?report, "read model rebuilt");
                ExitCode::SUCCESS
            }
            Err(err) => {
                tracing::error!("rebuild failed: {err:#}");
                ExitCode::FAILURE
            }
        },
    }
}
