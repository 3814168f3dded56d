use std::process::ExitCode;

use clap::Parser as _;
use eventstore::{App, Config};
use pipeline_runtime::{service, shutdown};

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    let _telemetry = match service::telemetry("eventstore", &config.telemetry) {
        Ok(guard) => guard,
        Err(code) => return code,
    };
    service::run(
        App::build(config),
        |app| tracing::info!(addr = %app.local_addr(), tls = app.uses_tls(), "eventstore listening"),
        |app| app.run_until_stopped(shutdown::signal()),
    )
    .await
}
