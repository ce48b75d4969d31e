//! The AsyncAPI 3.0 document of the events we publish and consume, generated from the same types
//! that produce them (the session schema comes from `SessionView` itself), served at
//! `/asyncapi.json` and checked against real relayed events by the tests.

use serde_json::{Map, Value, json};
use utoipa::{PartialSchema, ToSchema};

use crate::model::{EventType, SessionView};

const PUBLISHED: [(EventType, &str); 5] = [
    (
        EventType::Created,
        "A session was created (it is now the user's current session).",
    ),
    (
        EventType::Updated,
        "Mutable fields changed, the current session switched, or a case was unlinked.",
    ),
    (
        EventType::Ended,
        "The end boundary: a user, an operator or the system (`performer_id: system`) ended the session.",
    ),
    (
        EventType::Expired,
        "The sweeper expired the session at `expires_at` (`performer_id: system`).",
    ),
    (
        EventType::Deleted,
        "The session was deleted, by a client or for `auth.user.deleted.v1`.",
    ),
];

fn envelope(event_type: &str, payload: Value, description: &str) -> Value {
    json!({
        "name": event_type,
        "title": event_type,
        "summary": description,
        "contentType": "application/json",
        "payload": {
            "type": "object",
            "additionalProperties": false,
            "required": ["event_id", "event_type", "timestamp", "source", "payload"],
            "properties": {
                "event_id": {"type": "string", "format": "uuid", "description": "UUIDv4, unique forever; deduplicate on it."},
                "event_type": {"const": event_type},
                "timestamp": {"type": "string", "format": "date-time", "description": "RFC 3339, UTC, milliseconds, Z."},
                "source": {"type": "string"},
                "correlation_id": {"type": "string"},
                "performer_id": {"type": "string"},
                "payload": payload,
            }
        }
    })
}

/// A dead-letter stream entry: flat string fields, as stored.
fn dead_letter_message() -> Value {
    let text = |description: &str| json!({"type": "string", "description": description});
    json!({
        "name": "DeadLetter",
        "title": "Dead letter",
        "summary": "An inbound event set aside: it can never apply as it is, or kept failing.",
        "payload": {
            "type": "object",
            "required": ["stream_id", "reason", "error", "attempts", "dead_lettered_at", "fields"],
            "properties": {
                "stream_id": text("The event's entry id on the events stream."),
                "reason": {"enum": ["malformed", "unknown_type", "invalid", "failed"]},
                "error": text("What went wrong, in words."),
                "attempts": text("Attempts made, as a decimal number."),
                "dead_lettered_at": {"type": "string", "format": "date-time"},
                "fields": text("The event's stream entry fields, as a JSON object."),
            }
        }
    })
}

/// The document.
#[must_use]
pub fn document() -> Value {
    let mut schemas = Map::new();
    let mut dependencies = Vec::new();
    <SessionView as ToSchema>::schemas(&mut dependencies);
    schemas.insert(
        "SessionView".into(),
        serde_json::to_value(SessionView::schema()).unwrap_or_default(),
    );
    for (name, schema) in dependencies {
        schemas.insert(name, serde_json::to_value(schema).unwrap_or_default());
    }
    let mut messages = Map::new();
    let session = json!({"$ref": "#/components/schemas/SessionView"});
    for (kind, description) in PUBLISHED {
        messages.insert(
            kind.as_str().into(),
            envelope(kind.as_str(), session.clone(), description),
        );
    }
    let id_payload = |field: &str| json!({"type": "object", "required": [field], "properties": {field: {"type": "string", "minLength": 1, "maxLength": 128}}});
    messages.insert(
        EventType::UserDeleted.as_str().into(),
        envelope(
            EventType::UserDeleted.as_str(),
            id_payload("user_id"),
            "Consumed: delete every session of the user.",
        ),
    );
    messages.insert(
        EventType::CaseDeleted.as_str().into(),
        envelope(
            EventType::CaseDeleted.as_str(),
            id_payload("case_id"),
            "Consumed: unlink the case from every session.",
        ),
    );
    let refs = |names: Vec<&str>| -> Vec<Value> {
        names
            .into_iter()
            .map(|n| json!({"$ref": format!("#/channels/events/messages/{n}")}))
            .collect()
    };
    let channel_messages: Map<String, Value> = messages
        .keys()
        .map(|n| {
            (
                n.clone(),
                json!({"$ref": format!("#/components/messages/{n}")}),
            )
        })
        .collect();
    messages.insert("DeadLetter".into(), dead_letter_message());
    json!({
        "asyncapi": "3.0.0",
        "info": {
            "title": "Session events",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Events of the session service. Published events are written to a shard outbox in the same atomic commit as the state change and relayed to the events stream at least once. Stream entries have the fields `event_id`, `event_type` and `envelope` (this message, as JSON). Consumed events are applied once per `event_id`, from the stream or from `POST /v1/events`."
        },
        "channels": {
            "events": {
                "address": "{prefix}:{events}:stream",
                "description": "The global Redis stream (the part in braces is the literal Redis Cluster hash tag `events`).",
                "parameters": {"prefix": {"description": "The key prefix (`--key-prefix`, default `sess`)."}},
                "messages": channel_messages
            },
            "deadLetters": {
                "address": "{prefix}:{events}:dead-letters",
                "description": "Inbound events the consumer set aside (trimmed to about 10 000). Read and act on them through `/v1/dead-letters`.",
                "parameters": {"prefix": {"description": "The key prefix (`--key-prefix`, default `sess`)."}},
                "messages": {"DeadLetter": {"$ref": "#/components/messages/DeadLetter"}}
            }
        },
        "operations": {
            "publishSessionEvents": {
                "action": "send",
                "channel": {"$ref": "#/channels/events"},
                "messages": refs(PUBLISHED.iter().map(|(k, _)| k.as_str()).collect())
            },
            "consumeDeletions": {
                "action": "receive",
                "channel": {"$ref": "#/channels/events"},
                "messages": refs(vec![EventType::UserDeleted.as_str(), EventType::CaseDeleted.as_str()])
            },
            "setAsideDeadLetters": {
                "action": "send",
                "channel": {"$ref": "#/channels/deadLetters"},
                "messages": [{"$ref": "#/channels/deadLetters/messages/DeadLetter"}]
            }
        },
        "components": {"schemas": schemas, "messages": messages}
    })
}
