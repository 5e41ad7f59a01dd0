//! Integration tests: they run the real `cairn` binary, as a daemon on a
//! loopback port with a temporary data directory and as a command line
//! client, and check what a user or an operator would see.
//!
//! One test binary holds every module, so that Cargo builds and links the
//! tests once. `harness` starts and stops daemons and runs the client; the
//! other modules are the tests, grouped by what they exercise.

mod api;
mod audit;
mod backup;
mod cli;
mod durability;
mod harness;
mod history;
mod hooks;
mod reconcile;
mod replace_machine;
mod watch;
