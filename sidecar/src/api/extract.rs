//! Extractors that turn every kind of bad input into a problem response (never axum's plain
//! text rejections): JSON bodies, path ids, query strings, the caller and the correlation id.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::error::Error;
use crate::model::Envelope;
use crate::model::input::{
    CreateSession, EndSession, Heartbeat, NewMessage, SwitchCurrent, UpdateSession, parse_body,
    parse_object,
};
use crate::sessions::{Caller, Ctx};

use super::Shared;

/// A request body type and the top-level fields it accepts.
pub(crate) trait Accepts: DeserializeOwned {
    const FIELDS: &'static [&'static str];
}

macro_rules! accepts {
    ($($t:ty),*) => { $(impl Accepts for $t { const FIELDS: &'static [&'static str] = <$t>::FIELDS; })* };
}
accepts!(
    CreateSession,
    UpdateSession,
    Heartbeat,
    EndSession,
    SwitchCurrent,
    NewMessage
);

impl Accepts for Envelope {
    const FIELDS: &'static [&'static str] = &[
        "event_id",
        "event_type",
        "timestamp",
        "source",
        "correlation_id",
        "performer_id",
        "payload",
    ];
}

/// A validated JSON body.
pub(crate) struct Body<T>(pub T);

/// Any JSON object (memory bodies).
pub(crate) struct Object(pub Map<String, Value>);

/// Reads the body bytes: JSON media type required when there is a body, size limited.
async fn json_bytes(req: Request, state: &Shared) -> Result<Bytes, Error> {
    let json = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            let essence = ct
                .split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase();
            essence == "application/json"
                || (essence.starts_with("application/") && essence.ends_with("+json"))
        });
    let has_header = req.headers().contains_key(CONTENT_TYPE);
    let bytes = Bytes::from_request(req, state)
        .await
        .map_err(|_| Error::PayloadTooLarge(state.max_body_bytes))?;
    if !bytes.is_empty() && (!json || !has_header) {
        return Err(Error::UnsupportedMediaType);
    }
    Ok(bytes)
}

impl<T: Accepts> FromRequest<Shared> for Body<T> {
    type Rejection = Error;

    async fn from_request(req: Request, state: &Shared) -> Result<Self, Error> {
        let bytes = json_bytes(req, state).await?;
        parse_body(&bytes, T::FIELDS).map(Body)
    }
}

impl FromRequest<Shared> for Object {
    type Rejection = Error;

    async fn from_request(req: Request, state: &Shared) -> Result<Self, Error> {
        let bytes = json_bytes(req, state).await?;
        if bytes.is_empty() {
            return Err(Error::Validation("a JSON object is required".into()));
        }
        parse_object(&bytes).map(Object)
    }
}

/// The `{id}`-style path parameter(s), decoded.
pub(crate) struct PathParam(pub String);

impl FromRequestParts<Shared> for PathParam {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &Shared) -> Result<Self, Error> {
        axum::extract::Path::<String>::from_request_parts(parts, state)
            .await
            .map(|p| PathParam(p.0))
            .map_err(|e| Error::Validation(format!("invalid path parameter: {e}")))
    }
}

/// A query string, decoded.
pub(crate) struct Query<T>(pub T);

impl<T: DeserializeOwned + Send> FromRequestParts<Shared> for Query<T> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &Shared) -> Result<Self, Error> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Query(q.0))
            .map_err(|e| Error::Validation(format!("invalid query string: {}", e.body_text())))
    }
}

/// The correlation id of a request: `X-Correlation-ID`, else the trace id of a W3C
/// `traceparent`, else a new one (set by the correlation middleware).
#[derive(Debug, Clone)]
pub(crate) struct CorrelationId(pub String);

impl FromRequestParts<Shared> for Ctx {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &Shared) -> Result<Self, Error> {
        let caller: Caller = state.auth.caller(&parts.headers).await?;
        let correlation_id = parts.extensions.get::<CorrelationId>().map(|c| c.0.clone());
        Ok(Ctx {
            caller,
            correlation_id,
        })
    }
}
