//! Webhook receivers (issue 5, in progress): signature checks so far.
//!
//! # Layout
//!
//! - `signature.rs`: GitHub's `X-Hub-Signature-256`, the generic
//!   `t=...,v1=...` header with its 5-minute window, bearer tokens; all
//!   compared in constant time.

pub mod action;
pub mod signature;
