//! `POST /v1/events`: inbound events delivered over HTTP instead of the events stream.

use axum::Json;
use axum::extract::State;

use crate::error::{Error, Problem};
use crate::model::Envelope;
use crate::sessions::{Caller, Ctx, InboundOutcome};

use super::Shared;
use super::extract::Body;

/// Apply `auth.user.deleted.v1` or `case.deleted.v1`, once per `event_id`.
#[utoipa::path(post, path = "/v1/events", tag = "events", request_body = Envelope,
    responses(
        (status = 200, description = "Applied, or recognised as a duplicate", body = InboundOutcome),
        (status = 400, description = "Invalid envelope or unsupported event type", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs the service scope", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Store unavailable", body = Problem, content_type = "application/problem+json"),
    ))]
pub(crate) async fn inbound(
    State(state): State<Shared>,
    ctx: Ctx,
    Body(event): Body<Envelope>,
) -> Result<Json<InboundOutcome>, Error> {
    if ctx.caller != Caller::Trusted {
        return Err(Error::Forbidden("inbound events need the service scope"));
    }
    Ok(Json(state.sessions.apply_event(&event).await?))
}
