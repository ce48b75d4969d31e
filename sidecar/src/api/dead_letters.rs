//! `/v1/dead-letters`: inbound events the consumer set aside — list, inspect, replay one or
//! all, discard. Service scope only: they concern every user.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;

use crate::error::{Error, Problem};
use crate::events::dead_letters::{self, DeadLetter, ReplayReport};
use crate::sessions::{Caller, Ctx, InboundOutcome, Page};

use super::Shared;
use super::extract::{PathParam, Query};
use super::users::PageQuery;

fn service_scope(ctx: &Ctx) -> Result<(), Error> {
    if ctx.caller == Caller::Trusted {
        Ok(())
    } else {
        Err(Error::Forbidden("dead letters need the service scope"))
    }
}

/// Dead letters, oldest first.
#[utoipa::path(get, path = "/v1/dead-letters", tag = "dead-letters", params(PageQuery),
    responses(
        (status = 200, description = "A page of dead letters", body = Page<DeadLetter>),
        (status = 400, description = "Invalid cursor or limit", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs the service scope", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Store unavailable", body = Problem, content_type = "application/problem+json"),
    ))]
pub(crate) async fn list(
    State(state): State<Shared>,
    ctx: Ctx,
    Query(q): Query<PageQuery>,
) -> Result<Json<Page<DeadLetter>>, Error> {
    service_scope(&ctx)?;
    let page = dead_letters::list(&state.sessions, q.cursor.as_deref(), q.limit).await?;
    Ok(Json(page))
}

/// One dead letter: the event, its error, attempts and when it was set aside.
#[utoipa::path(get, path = "/v1/dead-letters/{id}", tag = "dead-letters",
    params(("id" = String, Path, description = "Dead letter id: `<ms>-<seq>`", pattern = r"^[0-9]{1,20}-[0-9]{1,20}$")),
    responses(
        (status = 200, description = "The dead letter", body = DeadLetter),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs the service scope", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such dead letter", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Store unavailable", body = Problem, content_type = "application/problem+json"),
    ))]
pub(crate) async fn get(
    State(state): State<Shared>,
    ctx: Ctx,
    PathParam(id): PathParam,
) -> Result<Json<DeadLetter>, Error> {
    service_scope(&ctx)?;
    Ok(Json(dead_letters::get(&state.sessions, &id).await?))
}

/// Discard a dead letter (its event is never applied).
#[utoipa::path(delete, path = "/v1/dead-letters/{id}", tag = "dead-letters",
    params(("id" = String, Path, description = "Dead letter id: `<ms>-<seq>`", pattern = r"^[0-9]{1,20}-[0-9]{1,20}$")),
    responses(
        (status = 204, description = "Discarded"),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs the service scope", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such dead letter", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Store unavailable", body = Problem, content_type = "application/problem+json"),
    ))]
pub(crate) async fn discard(
    State(state): State<Shared>,
    ctx: Ctx,
    PathParam(id): PathParam,
) -> Result<StatusCode, Error> {
    service_scope(&ctx)?;
    dead_letters::discard(&state.sessions, &id).await?;
    state.metrics.dead_letters_discarded.inc();
    Ok(StatusCode::NO_CONTENT)
}

/// Apply a dead letter's event now (once per `event_id`: an event applied meanwhile changes
/// nothing) and remove it; it stays when it still fails.
#[utoipa::path(post, path = "/v1/dead-letters/{id}/replay", tag = "dead-letters",
    params(("id" = String, Path, description = "Dead letter id: `<ms>-<seq>`", pattern = r"^[0-9]{1,20}-[0-9]{1,20}$")),
    responses(
        (status = 200, description = "Applied, or recognised as applied before; removed", body = InboundOutcome),
        (status = 400, description = "Malformed id, or the event still cannot be applied", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs the service scope", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such dead letter", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Store unavailable", body = Problem, content_type = "application/problem+json"),
    ))]
pub(crate) async fn replay(
    State(state): State<Shared>,
    ctx: Ctx,
    PathParam(id): PathParam,
) -> Result<Json<InboundOutcome>, Error> {
    service_scope(&ctx)?;
    let result = dead_letters::replay(&state.sessions, &id).await;
    let label = if result.is_ok() { "replayed" } else { "failed" };
    state
        .metrics
        .dead_letter_replays
        .with_label_values(&[label])
        .inc();
    Ok(Json(result?))
}

/// Replay every dead letter, oldest first; those that still fail stay and are listed.
#[utoipa::path(post, path = "/v1/dead-letters/replay", tag = "dead-letters",
    responses(
        (status = 200, description = "What was replayed and what still fails", body = ReplayReport),
        (status = 403, description = "Needs the service scope", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Store unavailable", body = Problem, content_type = "application/problem+json"),
    ))]
pub(crate) async fn replay_all(
    State(state): State<Shared>,
    ctx: Ctx,
) -> Result<Json<ReplayReport>, Error> {
    service_scope(&ctx)?;
    let report = dead_letters::replay_all(&state.sessions).await?;
    let replays = &state.metrics.dead_letter_replays;
    replays
        .with_label_values(&["replayed"])
        .inc_by(report.replayed as u64);
    replays
        .with_label_values(&["failed"])
        .inc_by(report.failed.len() as u64);
    Ok(Json(report))
}
