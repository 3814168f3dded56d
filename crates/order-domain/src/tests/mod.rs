//! Given/when/then tests of the whole domain; one test binary with the library.

mod deadlines;
mod decisions;
mod events;
mod fold;
mod given;
mod ids;
mod money;
mod properties;
mod request;
