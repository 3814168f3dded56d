//! ordersvc: the HTTP order API. Everything but start-up lives in the library.

use std::process::ExitCode;

use clap::Parser as _;
use ordersvc::{App, Config};
use pipeline_runtime::{service, shutdown};

/// glibc's malloc cost these services a third of their CPU under load (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let config = Config::parse();
    service::block_on("ordersvc", config.runtime, async move {
        let _telemetry = match service::telemetry("ordersvc", &config.telemetry) {
            Ok(guard) => guard,
            Err(code) => return code,
        };
        tracing::info!(?config, "starting");
        match run(config).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("ordersvc: {error:#}");
                ExitCode::FAILURE
            }
        }
    })
}

async fn run(config: Config) -> anyhow::Result<()> {
    let app = App::build(config).await?;
    app.run_until_stopped(shutdown::signal()).await
}
