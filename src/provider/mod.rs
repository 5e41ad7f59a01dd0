//! Providers: what turns a reconciler's action into a cloud resource.
//!
//! # Layout
//!
//! - `mod.rs`: the `Provider` trait, its error, and `Providers`, which picks
//!   the provider a manifest names (`sim` or `exec:<plugin>`).
//! - `sim.rs`: the simulated cloud, persisted in the data dir.
//! - `exec.rs`: a plugin program spoken to in JSON lines (docs/providers.md).
//!
//! # The contract
//!
//! - Every create carries an idempotency token. Creating twice with the same
//!   token yields one resource: the second call returns the first resource.
//! - Deleting a resource that is already gone succeeds.
//! - `describe` and `lookup` are consistent reads: a resource created by a
//!   call that returned is found by them at once. `list` may lag behind, as
//!   cloud listings do (eventual consistency).
//! - Errors say whether a retry may succeed (`retryable`).
//!
//! **Architecture Invariant:** providers know nothing of the log. They get
//! actions and tokens and answer with resources; recording intent and outcome
//! is the reconciler's job.

pub mod exec;
pub mod sim;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;

use crate::model::{CloudResource, ResourceSpec};

/// A failed provider call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ProviderError {
    pub message: String,
    /// Whether trying again (with the same token) may succeed.
    pub retryable: bool,
    /// The token already made a resource that no longer exists (an answer
    /// was lost, then the resource was deleted): only a new token can create
    /// one again.
    pub token_spent: bool,
}

impl ProviderError {
    pub fn retryable(message: impl Into<String>) -> ProviderError {
        ProviderError {
            message: message.into(),
            retryable: true,
            token_spent: false,
        }
    }

    pub fn permanent(message: impl Into<String>) -> ProviderError {
        ProviderError {
            message: message.into(),
            retryable: false,
            token_spent: false,
        }
    }

    pub fn token_spent(message: impl Into<String>) -> ProviderError {
        ProviderError {
            message: message.into(),
            retryable: false,
            token_spent: true,
        }
    }
}

#[async_trait]
pub trait Provider: Send + Sync {
    /// Creates the resource, tagged with the cluster and the token; or, when a
    /// resource with this token exists, returns it unchanged.
    async fn create(
        &self,
        cluster: &str,
        token: &str,
        spec: &ResourceSpec,
    ) -> Result<CloudResource, ProviderError>;

    /// Deletes a resource by its provider id. Gone already is success.
    async fn delete(
        &self,
        cluster: &str,
        token: &str,
        provider_id: &str,
    ) -> Result<(), ProviderError>;

    /// The resource with this provider id, if it exists. Consistent.
    async fn describe(&self, provider_id: &str) -> Result<Option<CloudResource>, ProviderError>;

    /// The resource created with this token, if any. Consistent.
    async fn lookup(&self, token: &str) -> Result<Option<CloudResource>, ProviderError>;

    /// Every resource tagged with the cluster. May lag behind recent creates
    /// and deletes.
    async fn list(&self, cluster: &str) -> Result<Vec<CloudResource>, ProviderError>;
}

/// The providers a daemon can use, by the name a manifest gives in
/// `spec.provider`.
#[derive(Clone, Default)]
pub struct Providers {
    by_name: BTreeMap<String, Arc<dyn Provider>>,
}

impl Providers {
    pub fn new() -> Providers {
        Providers::default()
    }

    /// Registers a provider under a manifest name: `sim` or `exec:<plugin>`.
    pub fn insert(&mut self, name: impl Into<String>, provider: Arc<dyn Provider>) {
        self.by_name.insert(name.into(), provider);
    }

    pub fn get(&self, name: &str) -> Option<&Arc<dyn Provider>> {
        self.by_name.get(name)
    }
}
