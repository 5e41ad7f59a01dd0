//! The one place that dispatches on the receiver type: checking a delivery
//! (authentication, then the payload) and planning its actions.

use super::action::PlannedHookAction;
use super::inbox::{Delivery, DeliveryPlan};
use super::signature::{self, AuthError};
use super::{generic, HookConfig, PayloadError, ReceiverConfig};
use crate::model::WebhookReceived;

/// Why a delivery was refused before it was recorded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Answered 401.
    #[error("{0}")]
    Unauthorized(#[from] AuthError),
    /// Answered 400.
    #[error("{0}")]
    Malformed(#[from] PayloadError),
}

impl Refusal {
    /// The reason as a metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::Unauthorized(_) => "unauthorized",
            Refusal::Malformed(_) => "malformed",
        }
    }
}

/// Authenticates a delivery and reads its payload. `header` looks a request
/// header up by its lowercase name; `now` is the receiver's clock in unix
/// seconds.
pub fn check<'a>(
    config: &HookConfig,
    header: impl Fn(&str) -> Option<&'a str>,
    body: &[u8],
    now: i64,
) -> Result<Delivery, Refusal> {
    let digest = Delivery::digest_of(body);
    match &config.receiver {
        ReceiverConfig::Generic(_) => {
            signature::verify_generic(
                &config.secret,
                header(generic::SIGNATURE_HEADER),
                body,
                now,
            )?;
            let request = generic::parse(body)?;
            Ok(Delivery {
                id: request.id.clone(),
                event: request.action.name().to_string(),
                digest,
                request: serde_json::to_string(&request).expect("a request serializes"),
            })
        }
    }
}

/// Reads the recorded request of a delivery and plans its actions. An error
/// is the reason the delivery fails as a whole.
pub async fn plan(config: &HookConfig, received: &WebhookReceived) -> Result<DeliveryPlan, String> {
    match &config.receiver {
        ReceiverConfig::Generic(_) => {
            let request: generic::GenericRequest = read_recorded(received)?;
            let action: PlannedHookAction =
                generic::plan(&request, &received.delivery).map_err(|error| error.to_string())?;
            Ok(DeliveryPlan {
                actions: vec![action],
                ..DeliveryPlan::default()
            })
        }
    }
}

fn read_recorded<T: serde::de::DeserializeOwned>(received: &WebhookReceived) -> Result<T, String> {
    serde_json::from_str(&received.request)
        .map_err(|error| format!("the recorded request does not read: {error}"))
}
