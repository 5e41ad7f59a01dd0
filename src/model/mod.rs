//! The cluster model: manifest types, parsing, validation with field paths,
//! and `diff(old, new) -> Vec<Change>`.
//!
//! A manifest travels through this module in one direction: bytes go through
//! [`parse_manifest`] (syntax, types, [`validate`], normalization), and two
//! manifests go through [`diff`] to become [`Change`]s for the log.
//! [`apply_change`] folds those changes back into a manifest.
//!
//! ```
//! use cairn::model::{diff, parse_manifest, Change, ManifestFormat};
//!
//! let yaml = include_str!("../../docs/examples/prod-eu.yaml");
//! let declared = parse_manifest(yaml.as_bytes(), ManifestFormat::Yaml).unwrap();
//! let scaled = yaml.replace("replicas: 5", "replicas: 7");
//! let scaled = parse_manifest(scaled.as_bytes(), ManifestFormat::Yaml).unwrap();
//!
//! // Applying the same manifest twice changes nothing; a scale is one event.
//! assert!(diff(Some(&declared), &declared).unwrap().is_empty());
//! let changes = diff(Some(&declared), &scaled).unwrap();
//! assert!(matches!(&changes[..], [Change::PoolScaled(s)] if s.from == 5 && s.to == 7));
//!
//! // Every problem is reported at once, each with its field path.
//! let bad = yaml.replace("replicas: 5", "replicas: 5000").replace("cidr: 10.0.1.0/24", "cidr: 10.9.1.0/24");
//! let error = parse_manifest(bad.as_bytes(), ManifestFormat::Yaml).unwrap_err();
//! let text = error.to_string();
//! assert!(text.contains("spec.pools[1].replicas"), "{text}");
//! assert!(text.contains("spec.network.subnets[0].cidr"), "{text}");
//! ```
//!
//! **Architecture Invariant:** this module knows nothing of storage, HTTP or
//! providers. Everything here is pure and testable without a runtime.

mod change;
mod cloud;
mod describe;
mod diff;
mod manifest;
mod parse;
mod text;
mod validate;
mod webhook;
mod yaml_shape;

#[cfg(test)]
pub(crate) mod arbitrary;

pub use change::*;
pub use cloud::*;
pub use describe::*;
pub use diff::*;
pub use manifest::*;
pub use parse::*;
pub use text::*;
pub use validate::*;
pub use webhook::*;
