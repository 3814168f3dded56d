//! The event store's subcommands; without one, it serves.

/// What the binary does besides serving.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Publish again the events the ORDERS stream lacks (after a broker lost acknowledged
    /// messages, its store folder, or a purge), each with its Nats-Msg-Id, in aggregate order.
    /// Safe to run at any time and twice. Exits 1 when something could not be republished.
    Republish(crate::republish::Args),
}
