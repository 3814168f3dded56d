use std::process::ExitCode;

use clap::Parser as _;
use pipeline_runtime::{service, shutdown};
use reviewworker::{App, Config};

/// glibc's malloc cost these services a third of their CPU under load (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let config = Config::parse();
    service::block_on("reviewworker", config.runtime, async move {
        let _telemetry = match service::telemetry("reviewworker", &config.telemetry) {
            Ok(guard) => guard,
            Err(code) => return code,
        };
        service::run(
            App::build(config),
            |_| tracing::info!("reviewworker consuming"),
            |app| app.run_until_stopped(shutdown::signal()),
        )
        .await
    })
}
