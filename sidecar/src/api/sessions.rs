//! `/v1/sessions/{id}`: create, look up (the hot path), update, heartbeat, end, delete.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::error::{Error, Problem};
use crate::model::SessionView;
use crate::model::input::{CreateSession, EndSession, Heartbeat, UpdateSession};
use crate::sessions::Ctx;

use super::Shared;
use super::extract::{Body, PathParam};

/// Create a session; it becomes the user's current session.
#[utoipa::path(post, path = "/v1/sessions", tag = "sessions", request_body = CreateSession,
    responses(
        (status = 201, description = "Created", body = SessionView),
        (status = 400, description = "Invalid input", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Another user's token", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Title taken or active-session cap reached", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Creation rate exceeded (see Retry-After)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Store unavailable (see Retry-After)", body = Problem, content_type = "application/problem+json"),
    ))]
pub(crate) async fn create(
    State(state): State<Shared>,
    ctx: Ctx,
    Body(input): Body<CreateSession>,
) -> Result<Response, Error> {
    let record = state.sessions.create(&ctx, input).await?;
    let location = HeaderValue::from_str(&format!("/v1/sessions/{}", record.session_id))
        .map_err(|e| Error::Corrupt(e.to_string()))?;
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(record.view()),
    )
        .into_response())
}

/// Look a session up: is it valid, and whose is it? Reads never extend the TTL.
///
/// The hot path: answered from the local cache when possible (ready-to-send bytes), else from
/// the store, with concurrent misses for one id sharing one store read (see `api::lookup`).
#[utoipa::path(get, path = "/v1/sessions/{session_id}", tag = "sessions",
    params(("session_id" = String, Path, description = "Session id: `sess_<shard>_<26 base32 characters>`", pattern = r"^sess_(0|[1-9][0-9]{0,4})_[a-z2-7]{25}[aeimquy4]$")),
    responses(
        (status = 200, description = "The session", body = SessionView),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such session, or expired", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Store unavailable", body = Problem, content_type = "application/problem+json"),
    ))]
pub(crate) async fn get(
    State(state): State<Shared>,
    ctx: Ctx,
    PathParam(id): PathParam,
) -> Result<Response, Error> {
    super::lookup::lookup(&state, &ctx.caller, &id).await
}

/// Update mutable fields with a JSON merge patch (title, case_id, metadata, data).
#[utoipa::path(patch, path = "/v1/sessions/{session_id}", tag = "sessions", request_body = UpdateSession,
    params(("session_id" = String, Path, description = "Session id: `sess_<shard>_<26 base32 characters>`", pattern = r"^sess_(0|[1-9][0-9]{0,4})_[a-z2-7]{25}[aeimquy4]$")),
    responses(
        (status = 200, description = "The updated session", body = SessionView),
        (status = 400, description = "Invalid patch", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Another user's session", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such session", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Ended session, or title taken", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Store unavailable", body = Problem, content_type = "application/problem+json"),
    ))]
pub(crate) async fn update(
    State(state): State<Shared>,
    ctx: Ctx,
    PathParam(id): PathParam,
    Body(patch): Body<UpdateSession>,
) -> Result<Json<SessionView>, Error> {
    Ok(Json(state.sessions.update(&ctx, &id, patch).await?.view()))
}

/// Delete a session with its messages and memory (not the current one).
#[utoipa::path(delete, path = "/v1/sessions/{session_id}", tag = "sessions",
    params(("session_id" = String, Path, description = "Session id: `sess_<shard>_<26 base32 characters>`", pattern = r"^sess_(0|[1-9][0-9]{0,4})_[a-z2-7]{25}[aeimquy4]$")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "The current session, or a malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Another user's session", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such session", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Store unavailable", body = Problem, content_type = "application/problem+json"),
    ))]
pub(crate) async fn delete(
    State(state): State<Shared>,
    ctx: Ctx,
    PathParam(id): PathParam,
) -> Result<StatusCode, Error> {
    state.sessions.delete(&ctx, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Extend an active session's expiry from now.
#[utoipa::path(put, path = "/v1/sessions/{session_id}/heartbeat", tag = "sessions", request_body(content = Heartbeat, description = "Optional"),
    params(("session_id" = String, Path, description = "Session id: `sess_<shard>_<26 base32 characters>`", pattern = r"^sess_(0|[1-9][0-9]{0,4})_[a-z2-7]{25}[aeimquy4]$")),
    responses(
        (status = 200, description = "The session with its new expiry", body = SessionView),
        (status = 400, description = "Invalid TTL", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Another user's session", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such session", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The session has ended", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Store unavailable", body = Problem, content_type = "application/problem+json"),
    ))]
pub(crate) async fn heartbeat(
    State(state): State<Shared>,
    ctx: Ctx,
    PathParam(id): PathParam,
    Body(input): Body<Heartbeat>,
) -> Result<Json<SessionView>, Error> {
    Ok(Json(
        state.sessions.heartbeat(&ctx, &id, input).await?.view(),
    ))
}

/// End a session (the end boundary event, `session.ended.v1`).
#[utoipa::path(post, path = "/v1/sessions/{session_id}/end", tag = "sessions", request_body = EndSession,
    params(("session_id" = String, Path, description = "Session id: `sess_<shard>_<26 base32 characters>`", pattern = r"^sess_(0|[1-9][0-9]{0,4})_[a-z2-7]{25}[aeimquy4]$")),
    responses(
        (status = 200, description = "The ended session", body = SessionView),
        (status = 400, description = "performer_id missing, or session_id mismatch", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Another user's session", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such session", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Already ended", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Store unavailable, or the event could not be recorded", body = Problem, content_type = "application/problem+json"),
    ))]
pub(crate) async fn end(
    State(state): State<Shared>,
    ctx: Ctx,
    PathParam(id): PathParam,
    Body(input): Body<EndSession>,
) -> Result<Json<SessionView>, Error> {
    Ok(Json(state.sessions.end(&ctx, &id, input).await?))
}
