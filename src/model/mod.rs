//! The cluster model: manifest types, parsing, validation with field paths,
//! and `diff(old, new) -> Vec<Change>`.
//!
//! A manifest travels through this module in one direction: bytes go through
//! [`parse_manifest`] (syntax, types, [`validate`], normalization), and two
//! manifests go through [`diff`] to become [`Change`]s for the log.
//! [`apply_change`] folds those changes back into a manifest.
//!
//! **Architecture Invariant:** this module knows nothing of storage, HTTP or
//! providers. Everything here is pure and testable without a runtime.

mod change;
mod describe;
mod diff;
mod manifest;
mod parse;
mod validate;

#[cfg(test)]
pub(crate) mod arbitrary;

pub use change::*;
pub use describe::*;
pub use diff::*;
pub use manifest::*;
pub use parse::*;
pub use validate::*;
