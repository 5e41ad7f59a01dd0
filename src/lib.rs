//! Cairn: an event-sourced infrastructure ledger.
//!
//! See docs/ARCHITECTURE.md for the bird's eye view and the codemap.

pub mod api;
pub mod audit;
pub mod backup;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod event;
pub mod ledger;
pub mod metrics;
pub mod model;
pub mod projection;
pub mod provider;
pub mod reconcile;
pub mod replay;
pub mod schema;
pub mod store;
pub mod webhook;
pub mod wire;

#[cfg(test)]
mod architecture_tests;
