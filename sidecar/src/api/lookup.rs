//! The one read path of `GET /v1/sessions/{id}`: cache lookup → fill from the store → the
//! response. The hot path in front of the router asks [`cached`] (a hit answered without
//! waiting on anything), the routed handler [`lookup`] (everything else); both answer with
//! [`respond`], so the bytes, status and content type of a lookup are decided here only.

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Json, Response};

use crate::cache::{Entry, Lookup};
use crate::error::{Error, PROBLEM_JSON};
use crate::sessions::Caller;

use super::Shared;
use super::auth::Auth;

/// A valid cached answer for `id` right now, without waiting on a fill in progress.
pub(crate) fn cached(state: &Shared, id: &str) -> Option<Entry> {
    state.cache.as_ref()?.try_hit(id)
}

/// The answer to `caller` looking up `id`: from the cache, else from the store (concurrent
/// misses for one id share one store read, and the answer is cached for the next).
///
/// # Errors
/// A malformed id, another user's session, or the store failing.
pub(crate) async fn lookup(state: &Shared, caller: &Caller, id: &str) -> Result<Response, Error> {
    let Some(cache) = &state.cache else {
        let record = state.sessions.get(id).await?;
        caller.check_owner(&record.user_id)?;
        return Ok(Json(record.view()).into_response());
    };
    state.sessions.shard_of_session(id)?; // malformed ids never reach the cache
    let entry = match cache.lookup(id).await {
        Lookup::Hit(entry) => entry,
        Lookup::Miss(fill) => {
            let entry = match state.sessions.get(id).await {
                Ok(record) => {
                    let json = serde_json::to_vec(&record.view())
                        .map_err(|e| Error::Corrupt(e.to_string()))?;
                    // Cached for long, so copied into an allocation of exactly its size: the
                    // serializer's grown buffer held about 1.5x the bytes in the benchmark.
                    let body = Bytes::copy_from_slice(&json);
                    // The owner is kept only where callers are checked against it.
                    let owner =
                        matches!(state.auth, Auth::Jwt(_)).then_some(record.user_id.as_str());
                    cache.found(body, owner, record.expires_ms)
                }
                Err(e @ Error::NotFound(_)) => cache.not_found(Bytes::from(e.problem_body())),
                Err(other) => return Err(other),
            };
            fill.complete(entry.clone());
            entry
        }
    };
    match (&entry.owner, caller) {
        (Some(owner), caller) => caller.check_owner(owner)?,
        // Entries carry their owner whenever callers are checked; refuse rather than guess.
        (None, Caller::User(_)) if entry.found => {
            return Err(Error::Forbidden("the session belongs to another user"));
        }
        (None, _) => {}
    }
    Ok(respond(entry))
}

/// A cache entry as the response: 200 with the session, or 404 with the problem.
#[must_use]
pub(crate) fn respond(entry: Entry) -> Response {
    let (status, content_type) = if entry.found {
        (StatusCode::OK, "application/json")
    } else {
        (StatusCode::NOT_FOUND, PROBLEM_JSON)
    };
    let mut response = Response::new(Body::from(entry.body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}
