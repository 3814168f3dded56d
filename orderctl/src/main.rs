// A command-line tool: its output is the point.
#![allow(
    clippy::print_stdout,
    reason = "orderctl reports to the operator on stdout"
)]

use std::process::ExitCode;

use clap::Parser as _;
use orderctl::Cli;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut out = std::io::stdout().lock();
    match cli.run(&mut out).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // One line: the causes joined, no backtrace.
            let message = format!("{err:#}").replace('\n', " ");
            eprintln!("orderctl: {message}");
            ExitCode::FAILURE
        }
    }
}
