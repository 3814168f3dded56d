//! The watcher against a real event store and read model (the harness's), sweeping at moments the
//! test chooses: a deadline in the future costs no waiting.

mod sweep;
