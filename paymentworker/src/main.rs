use std::process::ExitCode;

use clap::Parser as _;
use paymentworker::{App, Config};
use pipeline_runtime::{service, shutdown};

/// glibc's malloc cost these services a third of their CPU under load (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let config = Config::parse();
    service::block_on("paymentworker", config.runtime, async move {
        let _telemetry = match service::telemetry("paymentworker", &config.telemetry) {
            Ok(guard) => guard,
            Err(code) => return code,
        };
        service::run(
            App::build(config),
            |_| tracing::info!("paymentworker consuming"),
            |app| app.run_until_stopped(shutdown::signal()),
        )
        .await
    })
}
