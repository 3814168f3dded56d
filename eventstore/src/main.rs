use std::process::ExitCode;

use clap::{CommandFactory as _, Parser as _};
use eventstore::{App, Command, Config};
use pipeline_runtime::{service, shutdown};

/// glibc's malloc cost these services a third of their CPU under load (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // The whole configuration is parsed and checked before anything starts: a bad value exits 2,
    // like one clap refuses, with no port bound.
    let config = Config::parse();
    if let Err(err) = config.validate() {
        Config::command()
            .error(clap::error::ErrorKind::ValueValidation, format!("{err:#}"))
            .exit();
    }
    service::block_on("eventstore", config.runtime, async move {
        let _telemetry = match service::telemetry("eventstore", &config.telemetry) {
            Ok(guard) => guard,
            Err(code) => return code,
        };
        if let Some(Command::Republish(args)) = &config.command {
            #[allow(
                clippy::print_stdout,
                reason = "the report of a one-shot command is its output"
            )]
            return eventstore::republish::main(&config, args, |line| println!("{line}")).await;
        }
        service::run(
            App::build(config),
            |app| {
                tracing::info!(addr = %app.local_addr(), tls = app.uses_tls(), mtls = app.uses_mtls(), "eventstore listening");
                if app.uses_mtls() {
                    tracing::info!("{}", app.client_auth());
                } else {
                    tracing::warn!("{}", app.client_auth());
                }
            },
            |app| app.run_until_stopped(shutdown::signal()),
        )
        .await
    })
}
