//! Listing by user and org, and the user's current session.

use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use utoipa::IntoParams;

use crate::error::{Error, Problem};
use crate::model::SessionView;
use crate::model::input::SwitchCurrent;
use crate::sessions::{Ctx, Page};

use super::Shared;
use super::extract::{Body, PathParam, Query};

/// Pagination parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct PageQuery {
    /// From the previous page's `next_cursor`.
    pub cursor: Option<String>,
    /// Page size, 1–100 (default 20).
    pub limit: Option<usize>,
}

/// The user's sessions, newest first.
#[utoipa::path(get, path = "/v1/users/{user_id}/sessions", tag = "listing",
    params(("user_id" = String, Path, description = "User id: 1 to 128 characters, no whitespace", min_length = 1, max_length = 128, pattern = r"^[^\s\x00-\x1f\x7f]+$"), PageQuery),
    responses(
        (status = 200, description = "A page of sessions", body = Page<SessionView>),
        (status = 400, description = "Invalid cursor or limit", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Another user's token", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Store unavailable", body = Problem, content_type = "application/problem+json"),
    ))]
pub(crate) async fn list_user(
    State(state): State<Shared>,
    ctx: Ctx,
    PathParam(user): PathParam,
    Query(q): Query<PageQuery>,
) -> Result<Json<Page<SessionView>>, Error> {
    Ok(Json(
        state
            .sessions
            .list_user(&ctx, &user, q.cursor.as_deref(), q.limit)
            .await?,
    ))
}

/// The org's sessions, newest first (derived from events: new sessions appear once relayed).
#[utoipa::path(get, path = "/v1/orgs/{org_id}/sessions", tag = "listing",
    params(("org_id" = String, Path, description = "Org id: 1 to 128 characters, no whitespace", min_length = 1, max_length = 128, pattern = r"^[^\s\x00-\x1f\x7f]+$"), PageQuery),
    responses(
        (status = 200, description = "A page of sessions", body = Page<SessionView>),
        (status = 400, description = "Invalid cursor or limit", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs the service scope", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Store unavailable", body = Problem, content_type = "application/problem+json"),
    ))]
pub(crate) async fn list_org(
    State(state): State<Shared>,
    ctx: Ctx,
    PathParam(org): PathParam,
    Query(q): Query<PageQuery>,
) -> Result<Json<Page<SessionView>>, Error> {
    Ok(Json(
        state
            .sessions
            .list_org(&ctx, &org, q.cursor.as_deref(), q.limit)
            .await?,
    ))
}

/// The user's current session.
#[utoipa::path(get, path = "/v1/users/{user_id}/current-session", tag = "current",
    params(("user_id" = String, Path, description = "User id: 1 to 128 characters, no whitespace", min_length = 1, max_length = 128, pattern = r"^[^\s\x00-\x1f\x7f]+$")),
    responses(
        (status = 400, description = "Malformed id or parameter", body = Problem, content_type = "application/problem+json"),
        (status = 200, description = "The current session", body = SessionView),
        (status = 403, description = "Another user's token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No current session", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Store unavailable", body = Problem, content_type = "application/problem+json"),
    ))]
pub(crate) async fn current(
    State(state): State<Shared>,
    ctx: Ctx,
    PathParam(user): PathParam,
) -> Result<Json<SessionView>, Error> {
    Ok(Json(state.sessions.current(&ctx, &user).await?.view()))
}

/// Switch the current session, by id or by title.
#[utoipa::path(put, path = "/v1/users/{user_id}/current-session", tag = "current", request_body = SwitchCurrent,
    params(("user_id" = String, Path, description = "User id: 1 to 128 characters, no whitespace", min_length = 1, max_length = 128, pattern = r"^[^\s\x00-\x1f\x7f]+$")),
    responses(
        (status = 200, description = "The new current session", body = SessionView),
        (status = 400, description = "Give exactly one of session_id and title", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Another user's token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "The user has no such session", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The session has ended", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Store unavailable", body = Problem, content_type = "application/problem+json"),
    ))]
pub(crate) async fn switch_current(
    State(state): State<Shared>,
    ctx: Ctx,
    PathParam(user): PathParam,
    Body(target): Body<SwitchCurrent>,
) -> Result<Json<SessionView>, Error> {
    Ok(Json(
        state
            .sessions
            .switch_current(&ctx, &user, target)
            .await?
            .view(),
    ))
}
