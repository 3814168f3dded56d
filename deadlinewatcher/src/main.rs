use std::process::ExitCode;

use clap::Parser as _;
use deadlinewatcher::{App, Config};
use pipeline_runtime::{service, shutdown};

/// glibc's malloc cost these services a third of their CPU under load (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let config = Config::parse();
    service::block_on(deadlinewatcher::NAME, config.runtime, async move {
        let _telemetry = match service::telemetry(deadlinewatcher::NAME, &config.telemetry) {
            Ok(guard) => guard,
            Err(code) => return code,
        };
        service::run(
            App::build(config),
            |app| {
                let deadlines = app.deadlines();
                tracing::info!(
                    payment_deadline = %order_domain::format_duration(deadlines.payment),
                    review_deadline = %order_domain::format_duration(deadlines.review),
                    scan_interval = %order_domain::format_duration(app.scan_interval()),
                    "deadlinewatcher watching"
                );
            },
            |app| app.run_until_stopped(shutdown::signal()),
        )
        .await
    })
}
