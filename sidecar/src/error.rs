//! The one error type of the crate, and how it becomes an RFC 9457 problem response.
//!
//! Every variant has a stable `code` (also the last segment of the problem `type` URI); clients
//! branch on the code, never on the human-readable `detail`. Infrastructure failures become 503
//! with `Retry-After` and never leak internals; bad input is always 4xx.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::store::BackendError;

/// The crate's result type.
pub(crate) type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong, named after what failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    NotFound(&'static str),
    #[error("`{0}` is not a valid session id")]
    InvalidSessionId(String),
    #[error("{0}")]
    Validation(String),
    #[error("field `{0}` is not part of this request")]
    UnknownField(String),
    #[error("field `{0}` is set by the server and may not be supplied")]
    ServerField(String),
    #[error("the request body is not valid JSON: {0}")]
    MalformedJson(String),
    #[error("request bodies must be JSON (`Content-Type: application/json`)")]
    UnsupportedMediaType,
    #[error("the request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    #[error("performer_id is required (use \"system\" for system-initiated boundaries)")]
    PerformerRequired,
    #[error("session_id in the body does not match the session in the path")]
    SessionIdMismatch,
    #[error("the session belongs to another user")]
    UserMismatch,
    #[error("{0}")]
    Unauthorized(crate::api::auth::Denied),
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("the user already has a session with this title")]
    TitleTaken,
    #[error("the session has already ended")]
    SessionEnded,
    #[error("the current session cannot be deleted; switch to another session first")]
    CurrentSessionDelete,
    #[error("the user has reached the maximum number of active sessions")]
    ActiveLimit,
    #[error("too many sessions created; retry after {retry_after_s} s")]
    RateLimited { retry_after_s: u64 },
    #[error("the event outbox is full; the relay is not keeping up")]
    OutboxFull,
    #[error("the event could not be recorded, so nothing was changed")]
    AppendFailed,
    #[error("too many concurrent changes to this user; retry")]
    Contention,
    #[error("the session store is unavailable")]
    Unavailable(String),
    #[error(
        "the session store refused this operation to this service's Redis user; its ACL rules must be granted (the service's log names them)"
    )]
    StorePermission,
    #[error("the session store returned data this service cannot read")]
    Corrupt(String),
    #[error("the service is at its limit of requests in progress; retry")]
    Overloaded,
    #[error("the request did not complete in time; retry")]
    RequestTimeout,
    #[error("no route for this path")]
    RouteNotFound,
    #[error("method not allowed on this path")]
    MethodNotAllowed,
}

impl From<BackendError> for Error {
    fn from(e: BackendError) -> Self {
        match e {
            BackendError::Unavailable(m) => Error::Unavailable(m),
            BackendError::AppendFailed(_) => Error::AppendFailed,
            BackendError::Protocol(m) => Error::Corrupt(m),
            BackendError::NoPermission(m) => {
                tracing::error!(refused = %m, "Redis refused a command to this process's user: grant the user the rules of its role (README, Redis users)");
                Error::StorePermission
            }
        }
    }
}

/// Seconds a client should wait after a 503.
const UNAVAILABLE_RETRY_AFTER_S: u64 = 1;

impl Error {
    /// The HTTP status and the stable code.
    #[must_use]
    pub(crate) fn status_and_code(&self) -> (StatusCode, &'static str) {
        use StatusCode as S;
        match self {
            Error::NotFound(_) => (S::NOT_FOUND, "not_found"),
            Error::RouteNotFound => (S::NOT_FOUND, "route_not_found"),
            Error::MethodNotAllowed => (S::METHOD_NOT_ALLOWED, "method_not_allowed"),
            Error::InvalidSessionId(_) => (S::BAD_REQUEST, "invalid_session_id"),
            Error::Validation(_) => (S::BAD_REQUEST, "validation_failed"),
            Error::UnknownField(_) => (S::BAD_REQUEST, "unknown_field"),
            Error::ServerField(_) => (S::BAD_REQUEST, "server_field"),
            Error::MalformedJson(_) => (S::BAD_REQUEST, "malformed_json"),
            Error::UnsupportedMediaType => (S::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
            Error::PayloadTooLarge(_) => (S::PAYLOAD_TOO_LARGE, "payload_too_large"),
            Error::PerformerRequired => (S::BAD_REQUEST, "performer_required"),
            Error::SessionIdMismatch => (S::BAD_REQUEST, "session_id_mismatch"),
            Error::CurrentSessionDelete => (S::BAD_REQUEST, "current_session_delete"),
            Error::Unauthorized(denied) => (S::UNAUTHORIZED, denied.code()),
            Error::UserMismatch => (S::FORBIDDEN, "session_user_mismatch"),
            Error::Forbidden(_) => (S::FORBIDDEN, "forbidden"),
            Error::TitleTaken => (S::CONFLICT, "title_conflict"),
            Error::SessionEnded => (S::CONFLICT, "session_ended"),
            Error::ActiveLimit => (S::CONFLICT, "active_session_limit"),
            Error::RateLimited { .. } => (S::TOO_MANY_REQUESTS, "rate_limited"),
            Error::OutboxFull => (S::SERVICE_UNAVAILABLE, "outbox_full"),
            Error::AppendFailed => (S::SERVICE_UNAVAILABLE, "event_append_failed"),
            Error::Contention => (S::SERVICE_UNAVAILABLE, "contention"),
            Error::Unavailable(_) => (S::SERVICE_UNAVAILABLE, "store_unavailable"),
            Error::Overloaded => (S::SERVICE_UNAVAILABLE, "overloaded"),
            Error::RequestTimeout => (S::SERVICE_UNAVAILABLE, "request_timeout"),
            Error::Corrupt(_) => (S::INTERNAL_SERVER_ERROR, "store_corrupt"),
            Error::StorePermission => (S::INTERNAL_SERVER_ERROR, "store_permission_denied"),
        }
    }

    fn retry_after_s(&self) -> Option<u64> {
        match self {
            Error::RateLimited { retry_after_s } => Some(*retry_after_s),
            e if e.status_and_code().0 == StatusCode::SERVICE_UNAVAILABLE => {
                Some(UNAVAILABLE_RETRY_AFTER_S)
            }
            _ => None,
        }
    }
}

/// An RFC 9457 problem document.
#[derive(Debug, Serialize, serde::Deserialize, ToSchema)]
pub(crate) struct Problem {
    /// `https://sessions.io/problems/<code>`.
    #[serde(rename = "type")]
    pub type_uri: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// The stable machine-readable code.
    pub code: String,
}

/// The media type of problem responses.
pub(crate) const PROBLEM_JSON: &str = "application/problem+json";

impl Error {
    /// The problem document of this error, serialized.
    #[must_use]
    pub(crate) fn problem_body(&self) -> Vec<u8> {
        let (status, code) = self.status_and_code();
        let problem = Problem {
            type_uri: format!("https://sessions.io/problems/{code}"),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            // Display never includes infrastructure details (those stay in the log).
            detail: self.to_string(),
            code: code.to_owned(),
        };
        serde_json::to_vec(&problem).unwrap_or_default()
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        if status.is_server_error() {
            tracing::warn!(code, error = %self, "request failed");
        }
        let body = self.problem_body();
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some(s) = self.retry_after_s() {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
