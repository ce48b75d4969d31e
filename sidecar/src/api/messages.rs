//! Messages, the summary, and memory of a session.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;

use crate::error::{Error, Problem};
use crate::model::Message;
use crate::model::input::NewMessage;
use crate::model::message::Summary;
use crate::sessions::{Ctx, MemoryView, MemoryWrite, Page};

use super::Shared;
use super::extract::{Body, Object, PathParam, Query};
use super::users::PageQuery;

/// Append a message to an active session.
#[utoipa::path(post, path = "/v1/sessions/{session_id}/messages", tag = "messages", request_body = NewMessage,
    params(("session_id" = String, Path, description = "Session id: `sess_<shard>_<26 base32 characters>`", pattern = r"^sess_(0|[1-9][0-9]{0,4})_[a-z2-7]{25}[aeimquy4]$")),
    responses(
        (status = 201, description = "The stored message", body = Message),
        (status = 400, description = "Invalid message", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Another user's session", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such session", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The session has ended", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Store unavailable", body = Problem, content_type = "application/problem+json"),
    ))]
pub(crate) async fn append(
    State(state): State<Shared>,
    ctx: Ctx,
    PathParam(id): PathParam,
    Body(input): Body<NewMessage>,
) -> Result<(StatusCode, Json<Message>), Error> {
    Ok((
        StatusCode::CREATED,
        Json(state.sessions.append_message(&ctx, &id, input).await?),
    ))
}

/// Messages in order; `cursor` is the `seq` of the last message seen.
#[utoipa::path(get, path = "/v1/sessions/{session_id}/messages", tag = "messages",
    params(("session_id" = String, Path, description = "Session id: `sess_<shard>_<26 base32 characters>`", pattern = r"^sess_(0|[1-9][0-9]{0,4})_[a-z2-7]{25}[aeimquy4]$"), PageQuery),
    responses(
        (status = 200, description = "A page of messages", body = Page<Message>),
        (status = 400, description = "Invalid cursor or limit", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Another user's session", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such session", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Store unavailable", body = Problem, content_type = "application/problem+json"),
    ))]
pub(crate) async fn list(
    State(state): State<Shared>,
    ctx: Ctx,
    PathParam(id): PathParam,
    Query(q): Query<PageQuery>,
) -> Result<Json<Page<Message>>, Error> {
    Ok(Json(
        state
            .sessions
            .list_messages(&ctx, &id, q.cursor.as_deref(), q.limit)
            .await?,
    ))
}

/// Message counts, token and cost totals.
#[utoipa::path(get, path = "/v1/sessions/{session_id}/summary", tag = "messages",
    params(("session_id" = String, Path, description = "Session id: `sess_<shard>_<26 base32 characters>`", pattern = r"^sess_(0|[1-9][0-9]{0,4})_[a-z2-7]{25}[aeimquy4]$")),
    responses(
        (status = 400, description = "Malformed id or parameter", body = Problem, content_type = "application/problem+json"),
        (status = 200, description = "The summary", body = Summary),
        (status = 403, description = "Another user's session", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such session", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Store unavailable", body = Problem, content_type = "application/problem+json"),
    ))]
pub(crate) async fn summary(
    State(state): State<Shared>,
    ctx: Ctx,
    PathParam(id): PathParam,
) -> Result<Json<Summary>, Error> {
    Ok(Json(state.sessions.summary(&ctx, &id).await?))
}

/// The session's memory.
#[utoipa::path(get, path = "/v1/sessions/{session_id}/memory", tag = "memory",
    params(("session_id" = String, Path, description = "Session id: `sess_<shard>_<26 base32 characters>`", pattern = r"^sess_(0|[1-9][0-9]{0,4})_[a-z2-7]{25}[aeimquy4]$")),
    responses(
        (status = 400, description = "Malformed id or parameter", body = Problem, content_type = "application/problem+json"),
        (status = 200, description = "The memory", body = MemoryView),
        (status = 403, description = "Another user's session", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such session", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Store unavailable", body = Problem, content_type = "application/problem+json"),
    ))]
pub(crate) async fn memory(
    State(state): State<Shared>,
    ctx: Ctx,
    PathParam(id): PathParam,
) -> Result<Json<MemoryView>, Error> {
    Ok(Json(state.sessions.memory(&ctx, &id).await?))
}

/// Replace the memory with the given object.
#[utoipa::path(put, path = "/v1/sessions/{session_id}/memory", tag = "memory", request_body = std::collections::HashMap<String, serde_json::Value>,
    params(("session_id" = String, Path, description = "Session id: `sess_<shard>_<26 base32 characters>`", pattern = r"^sess_(0|[1-9][0-9]{0,4})_[a-z2-7]{25}[aeimquy4]$")),
    responses(
        (status = 200, description = "The memory", body = MemoryView),
        (status = 400, description = "Not an object, or too large", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Another user's session", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such session", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The session has ended", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Store unavailable", body = Problem, content_type = "application/problem+json"),
    ))]
pub(crate) async fn replace_memory(
    State(state): State<Shared>,
    ctx: Ctx,
    PathParam(id): PathParam,
    Object(body): Object,
) -> Result<Json<MemoryView>, Error> {
    Ok(Json(
        state
            .sessions
            .write_memory(&ctx, &id, MemoryWrite::Replace, body)
            .await?,
    ))
}

/// Merge into the memory (RFC 7386 JSON merge patch: `null` removes a member).
#[utoipa::path(patch, path = "/v1/sessions/{session_id}/memory", tag = "memory", request_body = std::collections::HashMap<String, serde_json::Value>,
    params(("session_id" = String, Path, description = "Session id: `sess_<shard>_<26 base32 characters>`", pattern = r"^sess_(0|[1-9][0-9]{0,4})_[a-z2-7]{25}[aeimquy4]$")),
    responses(
        (status = 200, description = "The memory", body = MemoryView),
        (status = 400, description = "Not an object, or too large", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Another user's session", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such session", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The session has ended", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Store unavailable", body = Problem, content_type = "application/problem+json"),
    ))]
pub(crate) async fn merge_memory(
    State(state): State<Shared>,
    ctx: Ctx,
    PathParam(id): PathParam,
    Object(body): Object,
) -> Result<Json<MemoryView>, Error> {
    Ok(Json(
        state
            .sessions
            .write_memory(&ctx, &id, MemoryWrite::Merge, body)
            .await?,
    ))
}
