//! tracestore: Zipkin's v2 API and a trace viewer, in memory, for a machine without Zipkin.

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser as _;
use tracestore::{DEFAULT_MAX_SPANS, Store};

/// An in-memory span store that speaks Zipkin's v2 HTTP API, with a trace list at /zipkin/ and a
/// waterfall at /zipkin/traces/{id}. Not a Zipkin replacement: nothing is kept on disk.
#[derive(Debug, clap::Parser)]
#[command(name = "tracestore", version)]
struct Config {
    /// Address to listen on (`TRACESTORE_ADDR`).
    #[arg(long, env = "TRACESTORE_ADDR", default_value = "127.0.0.1:9411")]
    addr: SocketAddr,

    /// Spans kept at most; the oldest traces are dropped beyond (`TRACESTORE_MAX_SPANS`).
    #[arg(long, env = "TRACESTORE_MAX_SPANS", default_value_t = DEFAULT_MAX_SPANS,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=100_000_000))]
    max_spans: usize,
}

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let listener = match tokio::net::TcpListener::bind(config.addr).await {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!(
                "tracestore: cannot listen on {} (TRACESTORE_ADDR): {err}",
                config.addr
            );
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(addr = %config.addr, max_spans = config.max_spans, "tracestore listening: traces at /zipkin/");
    match tracestore::serve(listener, Store::new(config.max_spans), stopped()).await {
        Ok(()) => {
            tracing::info!("tracestore stopped");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("tracestore: {err}");
            ExitCode::FAILURE
        }
    }
}

/// SIGINT or SIGTERM.
async fn stopped() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(_) => {
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}
