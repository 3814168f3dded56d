//! One module per subcommand.

pub mod dead_letters;
pub mod events;
