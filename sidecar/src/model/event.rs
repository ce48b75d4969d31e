//! Event envelopes (the AsyncAPI document describes them): the ones we publish and the ones we consume.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

/// The `source` of every event this service publishes.
pub(crate) const SOURCE: &str = "session-service";

/// Event types we publish and consume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EventType {
    Created,
    Updated,
    Ended,
    Expired,
    Deleted,
    UserDeleted,
    CaseDeleted,
}

impl EventType {
    /// The wire name.
    #[must_use]
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            EventType::Created => "session.created.v1",
            EventType::Updated => "session.updated.v1",
            EventType::Ended => "session.ended.v1",
            EventType::Expired => "session.expired.v1",
            EventType::Deleted => "session.deleted.v1",
            EventType::UserDeleted => "auth.user.deleted.v1",
            EventType::CaseDeleted => "case.deleted.v1",
        }
    }

    /// Parses a wire name.
    #[must_use]
    pub(crate) fn parse(name: &str) -> Option<Self> {
        [
            EventType::Created,
            EventType::Updated,
            EventType::Ended,
            EventType::Expired,
            EventType::Deleted,
            EventType::UserDeleted,
            EventType::CaseDeleted,
        ]
        .into_iter()
        .find(|t| t.as_str() == name)
    }
}

/// The envelope of every event, published or consumed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    /// UUIDv4, unique forever: consumers deduplicate on it.
    #[schema(format = "uuid")]
    pub event_id: String,
    /// For example `session.created.v1`; `POST /v1/events` takes the consumed types only.
    #[schema(pattern = r"^(auth\.user\.deleted\.v1|case\.deleted\.v1)$")]
    pub event_type: String,
    /// RFC 3339 UTC with milliseconds, set by the publisher.
    pub timestamp: String,
    /// The publishing service.
    pub source: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub performer_id: Option<String>,
    /// For `session.*` events the session after the change; for consumed events, as published.
    pub payload: Value,
}

impl Envelope {
    /// The stream fields of this event (outbox and global stream alike).
    #[must_use]
    pub fn to_stream_fields(&self) -> Vec<(String, String)> {
        vec![
            ("event_id".to_owned(), self.event_id.clone()),
            ("event_type".to_owned(), self.event_type.clone()),
            (
                "envelope".to_owned(),
                serde_json::to_string(self).unwrap_or_default(),
            ),
        ]
    }

    /// The stream fields of this event without its payload, which the store fills in: the
    /// last value stops where the payload goes, and the text returned goes after it.
    #[must_use]
    pub fn into_stream_fields_around_payload(mut self) -> (Vec<(String, String)>, String) {
        self.payload = Value::Null;
        let mut fields = self.to_stream_fields();
        // The payload is the envelope's last member: `…,"payload":null}`.
        let tail = fields
            .last_mut()
            .and_then(|(_, envelope)| {
                let at = envelope.rfind("null")?;
                let tail = envelope[at + "null".len()..].to_owned();
                envelope.truncate(at);
                Some(tail)
            })
            .unwrap_or_default();
        (fields, tail)
    }

    /// Reads an event back from stream fields.
    #[must_use]
    pub fn from_stream_fields(fields: &[(String, String)]) -> Option<Self> {
        let raw = fields.iter().find(|(k, _)| k == "envelope")?;
        serde_json::from_str(&raw.1).ok()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::Envelope;

    #[test]
    fn a_payload_filled_in_between_the_fields_and_the_tail_makes_the_whole_event() {
        let event = Envelope {
            event_id: "e1".into(),
            event_type: "session.ended.v1".into(),
            timestamp: "2026-01-01T00:00:00.000Z".into(),
            source: "session-service".into(),
            correlation_id: Some("null".into()),
            performer_id: None,
            payload: json!({"session_id": "s", "note": null}),
        };
        let (mut fields, tail) = event.clone().into_stream_fields_around_payload();
        if let Some((_, head)) = fields.last_mut() {
            head.push_str(&event.payload.to_string());
            head.push_str(&tail);
        }
        assert_eq!(fields, event.to_stream_fields());
    }
}
