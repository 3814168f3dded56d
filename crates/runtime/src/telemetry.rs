//! Logging and tracing set-up shared by every binary.

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// Installs a `tracing` subscriber that writes to stderr, filtered by `RUST_LOG` (default `info`).
///
/// Safe to call more than once (tests start several services in one process): later calls are no-ops.
pub fn init(service_name: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(fmt::layer().with_writer(std::io::stderr).with_target(true))
        .try_init()
        .is_ok();
    if installed {
        tracing::info!(service.name = service_name, "telemetry initialised");
    }
}
