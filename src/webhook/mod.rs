//! Webhook receivers (issue 5, in progress): signature checks, and the pure
//! receiver logic of GitHub and Alertmanager with the git reading it needs.
//!
//! # Layout
//!
//! - `signature.rs`: GitHub's `X-Hub-Signature-256`, the generic
//!   `t=...,v1=...` header with its 5-minute window, bearer tokens; all
//!   compared in constant time.
//! - `action.rs`: `HookAction`, `PlannedHookAction` and `Skipped`, what a
//!   receiver hands to the inbox.
//! - `payload.rs`: `PayloadError` and the JSON reading shared by receivers,
//!   whose errors name the field at fault (`alerts[2].fingerprint`).
//! - `github.rs` (pure): `GithubSettings`, `parse` of `ping` and `push`
//!   deliveries, `plan_push` from the manifest files at the pushed commit.
//! - `git.rs` (IO): `GitSource` runs the git program on the local clone:
//!   fetch, the manifest files at a commit, the files a push removed.
//! - `alertmanager.rs` (pure): `AlertmanagerSettings` and its rules, `parse`
//!   of Alertmanager's webhook payload (version 4), `delivery_id`, and `plan`.

pub mod action;
pub mod alertmanager;
pub mod git;
pub mod github;
pub mod payload;
pub mod signature;
