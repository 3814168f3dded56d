//! `bootstrapper`: prepares SQL and JetStream for the order pipeline, then exits.
//!
//! Exit codes: 0 done, 1 a server could not be reached or refused a change, 2 invalid configuration.

use std::process::ExitCode;

use bootstrapper::Config;
use clap::Parser as _;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let config = Config::parse();
    // A one-shot CLI: its report goes to stdout, so logs (stderr) stay quiet unless RUST_LOG asks.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();

    if let Err(err) = config.validate() {
        eprintln!("bootstrapper: {err:#}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("bootstrapper: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    #[allow(
        clippy::print_stdout,
        reason = "the report of a one-shot CLI is its output"
    )]
    let result = runtime.block_on(bootstrapper::run_with(&config, |step| println!("{step}")));
    match result {
        Ok(_) => ExitCode::SUCCESS,
        Err(err) => {
            // `{:#}` puts the whole cause chain on one line, without a backtrace.
            eprintln!("bootstrapper: {err:#}");
            ExitCode::FAILURE
        }
    }
}
