//! API errors and their RFC 7807 problem+json responses.

use std::convert::Infallible;

use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Rejection, Reply};

use crate::ledger::LedgerError;
use crate::model::{FieldError, ManifestError};
use crate::store::StoreError;
use crate::wire::Problem;

/// Every way a request can fail, with its status and stable code.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub detail: String,
    pub errors: Vec<FieldError>,
    pub current_version: Option<u64>,
    pub retryable: bool,
    /// Answer with `Connection: close`: the request body may be unread.
    pub close_connection: bool,
}

impl warp::reject::Reject for ApiError {}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            detail: detail.into(),
            errors: Vec::new(),
            current_version: None,
            retryable: false,
            close_connection: false,
        }
    }

    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, detail)
    }

    /// The same answer with `Connection: close`: for a request whose body
    /// is unread, or may be misread, so the connection cannot be reused.
    pub fn closing(self) -> ApiError {
        ApiError {
            close_connection: true,
            ..self
        }
    }

    pub fn not_found(detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", detail)
    }

    pub fn unauthorized(detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", detail)
    }

    pub fn invalid(errors: Vec<FieldError>) -> ApiError {
        let detail = match errors.len() {
            1 => format!("1 problem: {}", errors[0]),
            count => format!("{count} problems, the first: {}", errors[0]),
        };
        ApiError {
            errors,
            ..ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_manifest", detail)
        }
    }

    pub fn into_response(self) -> Response {
        let problem = Problem {
            problem_type: format!("urn:cairn:problem:{}", self.code),
            title: self
                .status
                .canonical_reason()
                .unwrap_or("Error")
                .to_string(),
            status: self.status.as_u16(),
            code: self.code.to_string(),
            detail: self.detail,
            errors: self.errors,
            current_version: self.current_version,
            retryable: self.retryable,
        };
        let body = serde_json::to_vec(&problem).expect("a problem always serializes");
        let mut response = Response::new(body.into());
        *response.status_mut() = self.status;
        response.headers_mut().insert(
            "content-type",
            warp::http::HeaderValue::from_static("application/problem+json"),
        );
        if self.close_connection {
            response
                .headers_mut()
                .insert("connection", warp::http::HeaderValue::from_static("close"));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                "www-authenticate",
                warp::http::HeaderValue::from_static("Bearer realm=\"cairn\""),
            );
        }
        response
    }
}

impl From<ManifestError> for ApiError {
    fn from(error: ManifestError) -> ApiError {
        match error {
            ManifestError::Invalid(errors) => ApiError::invalid(errors),
            syntax => ApiError::bad_request("malformed", syntax.to_string()),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> ApiError {
        let detail = error.to_string();
        let retryable = error.is_retryable();
        let mut api = match error {
            StoreError::WrongExpectedVersion { current, .. } => ApiError {
                current_version: Some(current),
                ..ApiError::new(StatusCode::CONFLICT, "version_conflict", detail)
            },
            // The store knows the key under its principal; the client, its own.
            StoreError::IdempotencyKeyReused { key } => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                StoreError::IdempotencyKeyReused {
                    key: crate::ledger::client_key(&key).to_string(),
                }
                .to_string(),
            ),
            StoreError::EventTooLarge { .. } => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "event_too_large", detail)
            }
            StoreError::InvalidRequest(_) => ApiError::bad_request("invalid_request", detail),
            StoreError::ImportRejected { .. } => ApiError::bad_request("import_rejected", detail),
            StoreError::Corrupt { .. } | StoreError::DamagedLog { .. } => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "corrupt_log", detail)
            }
            StoreError::WrongFormat(_) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "wrong_format", detail)
            }
            StoreError::OutcomeUnknown(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "outcome_unknown", detail)
            }
            StoreError::Failed(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "store_failed", detail)
            }
            StoreError::Io(_) | StoreError::Closed | StoreError::Locked { .. } => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", detail)
            }
        };
        api.retryable = retryable;
        api
    }
}

impl From<LedgerError> for ApiError {
    fn from(error: LedgerError) -> ApiError {
        match error {
            LedgerError::Invalid(errors) => ApiError::invalid(errors),
            LedgerError::VersionMismatch { current, .. } => ApiError {
                current_version: Some(current),
                ..ApiError::new(StatusCode::CONFLICT, "version_conflict", error.to_string())
            },
            LedgerError::ClusterNotFound(_) => ApiError::new(
                StatusCode::NOT_FOUND,
                "cluster_not_found",
                error.to_string(),
            ),
            LedgerError::ClusterNotFoundAt { .. } => ApiError::new(
                StatusCode::NOT_FOUND,
                "cluster_not_found",
                error.to_string(),
            ),
            LedgerError::PointAfterHead { .. } => {
                ApiError::bad_request("point_after_head", error.to_string())
            }
            LedgerError::PoolNotFound { .. } => {
                ApiError::new(StatusCode::NOT_FOUND, "pool_not_found", error.to_string())
            }
            LedgerError::MachineNotFound { .. } => ApiError::new(
                StatusCode::NOT_FOUND,
                "machine_not_found",
                error.to_string(),
            ),
            LedgerError::ClusterDeleting(_) => {
                ApiError::new(StatusCode::CONFLICT, "cluster_deleting", error.to_string())
            }
            LedgerError::ChangeTooLarge { .. } => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "event_too_large",
                error.to_string(),
            ),
            LedgerError::ProjectionBehind { .. } => ApiError {
                retryable: true,
                ..ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    error.to_string(),
                )
            },
            LedgerError::Store(store) => store.into(),
        }
    }
}

/// Turns every rejection, ours or warp's, into a problem document.
pub async fn recover(rejection: Rejection) -> Result<Response, Infallible> {
    let error = if let Some(error) = rejection.find::<ApiError>() {
        ApiError {
            status: error.status,
            code: error.code,
            detail: error.detail.clone(),
            errors: error.errors.clone(),
            current_version: error.current_version,
            retryable: error.retryable,
            close_connection: error.close_connection,
        }
    } else if rejection.is_not_found() {
        ApiError::not_found("no such endpoint")
    } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this endpoint does not take that method",
        )
    } else if let Some(error) = rejection.find::<warp::reject::InvalidHeader>() {
        ApiError::bad_request("bad_header", error.to_string())
    } else if let Some(error) = rejection.find::<warp::reject::InvalidQuery>() {
        ApiError::bad_request("bad_query", error.to_string())
    } else {
        tracing::warn!(?rejection, "unhandled rejection");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("{rejection:?}"),
        )
    };
    Ok(error.into_response())
}

/// A reply or a problem.
pub fn respond<T: Reply>(result: Result<T, ApiError>) -> Response {
    match result {
        Ok(reply) => reply.into_response(),
        Err(error) => error.into_response(),
    }
}
