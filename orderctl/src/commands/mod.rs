//! One module per subcommand.

pub mod cancel;
pub mod create;
pub mod dead_letters;
pub mod deadlines;
pub mod events;
pub mod get;
pub mod list;
pub mod load;
pub mod trace;
pub mod watch;
