//! devstack: the single-machine dev stack of the order pipeline (scripts/stack and scripts/run
//! call it after installing packages and building).

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use devstack::{Reported, Stack};

/// PostgreSQL, nats-server, a trace store and every service of the pipeline as background
/// processes, with state, logs and pid files under STACK_DIR (see the README's table of
/// variables).
#[derive(Debug, Parser)]
#[command(name = "devstack", version)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Start what is not running, bootstrap, wait until healthy.
    Start,
    /// SIGTERM every service, then the trace store, nats-server (if ours) and PostgreSQL.
    Stop,
    /// One line per process: name, pid, port, health, log (exit 1 when something is down).
    Status,
    /// The last lines of one or every log.
    Logs {
        /// Follow the log(s).
        #[arg(short, long)]
        follow: bool,
        /// postgresql, nats-server, tracestore, bootstrapper or a service.
        name: Option<String>,
    },
    /// The variables a client needs, as `export` lines: eval "$(scripts/stack env)".
    Env,
    /// Print a bearer token signed with the stack's key (the stack must have started once).
    Token {
        /// The customer (the token's `sub`).
        #[arg(long)]
        customer: String,
        /// Space-separated scopes, e.g. `orders:admin` for an operator.
        #[arg(long)]
        scope: Option<String>,
        /// How long the token lives: 1h, 30m, 90s.
        #[arg(long, default_value = "1h", value_parser = devstack::tokens::parse_ttl)]
        ttl: std::time::Duration,
    },
    /// Start the stack, post four sample orders and show their states, histories and traces.
    Run,
    /// Benchmark the whole pipeline and the event store alone on stacks of their own, with
    /// `--baseline-bin` beside another build's binaries in the same run (what scripts/bench runs).
    Bench(devstack::bench::Args),
    /// The stack's trace store (tracestore: Zipkin's v2 API and a trace viewer, in memory) on
    /// 127.0.0.1:PORT until SIGINT or SIGTERM; `start` runs it in the background.
    #[command(hide = true)]
    TraceStore {
        #[arg(long)]
        port: u16,
        /// Spans kept at most; beyond, the oldest traces are dropped whole.
        #[arg(long, env = "TRACESTORE_MAX_SPANS", default_value_t = tracestore::DEFAULT_MAX_SPANS,
              value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=100_000_000))]
        max_spans: usize,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(code) => code,
        Err(error) => {
            if error.downcast_ref::<Reported>().is_none() {
                eprintln!("stack: {error:#}");
            }
            ExitCode::FAILURE
        }
    }
}

#[allow(clippy::print_stdout)]
fn run(command: Cmd) -> anyhow::Result<ExitCode> {
    match command {
        Cmd::Start => {
            Stack::start()?;
        }
        Cmd::Stop => Stack::recorded()?.stop(),
        Cmd::Status => {
            if !Stack::recorded()?.status() {
                return Ok(ExitCode::FAILURE);
            }
        }
        Cmd::Logs { follow, name } => return Err(Stack::recorded()?.logs(follow, name.as_deref())),
        Cmd::Env => {
            for line in Stack::recorded()?.env_lines() {
                println!("{line}");
            }
        }
        Cmd::Token {
            customer,
            scope,
            ttl,
        } => {
            let issuer = devstack::tokens::load(&Stack::recorded()?.layout.dir)?;
            println!("{}", issuer.token(&customer, scope.as_deref(), ttl));
        }
        Cmd::Run => {
            let stack = Stack::start()?;
            if !devstack::sample::run(&stack)? {
                return Ok(ExitCode::FAILURE);
            }
        }
        Cmd::Bench(args) => tokio::runtime::Runtime::new()?.block_on(devstack::bench::run(args))?,
        Cmd::TraceStore { port, max_spans } => trace_store(port, max_spans)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// tracestore's server on 127.0.0.1:`port` until SIGINT or SIGTERM.
fn trace_store(port: u16, max_spans: usize) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(false)
        .init();
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .map_err(|error| {
                anyhow::anyhow!("tracestore cannot listen on 127.0.0.1:{port}: {error}")
            })?;
        tracing::info!(port, max_spans, "tracestore listening: traces at /zipkin/");
        tracestore::serve(
            listener,
            tracestore::Store::new(max_spans),
            pipeline_runtime::shutdown::signal(),
        )
        .await?;
        tracing::info!("tracestore stopped");
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
