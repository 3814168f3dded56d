use std::process::ExitCode;

use clap::Parser as _;
use pipeline_runtime::{service, shutdown};
use querymodelworker::{App, Cli, Command};

/// glibc's malloc cost these services a third of their CPU under load (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    service::block_on(querymodelworker::WORKER, cli.config.runtime, async move {
        let _telemetry = match service::telemetry(querymodelworker::WORKER, &cli.config.telemetry) {
            Ok(guard) => guard,
            Err(code) => return code,
        };
        match cli.command.unwrap_or(Command::Run) {
            Command::Run => {
                service::run(
                    App::build(cli.config),
                    |_| tracing::info!("querymodelworker consuming"),
                    |app| app.run_until_stopped(shutdown::signal()),
                )
                .await
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
    })
}
