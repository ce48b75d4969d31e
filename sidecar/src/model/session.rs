//! A session as stored (a Redis hash of flat string fields) and as shown (JSON).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::clock::rfc3339;
use crate::model::message::Role;

/// Lifecycle status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Active,
    Ended,
    Expired,
}

impl Status {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Status::Active => "active",
            Status::Ended => "ended",
            Status::Expired => "expired",
        }
    }
}

/// The stored session. Times are Unix milliseconds; cost is in micro-units so that sums are
/// exact integers (`HINCRBY`-safe, no float drift).
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub session_id: String,
    pub user_id: String,
    pub org_id: Option<String>,
    pub title: Option<String>,
    pub case_id: Option<String>,
    pub status: Status,
    pub current: bool,
    pub metadata: Map<String, Value>,
    pub data: Map<String, Value>,
    pub created_ms: i64,
    pub updated_ms: i64,
    /// When an active session expires; for an ended one, when it is purged.
    pub expires_ms: i64,
    pub ended_ms: Option<i64>,
    /// Why the session was ended, as the ender said (`POST …/end` with `reason`).
    pub end_reason: Option<String>,
    pub performer_id: Option<String>,
    pub version: u64,
    /// Messages per role, in `Role::ALL` order.
    pub messages_by_role: [u64; 4],
    pub tokens_total: u64,
    pub cost_micros: u64,
    pub last_message_ms: Option<i64>,
}

impl Record {
    /// Whether the session is still visible: `expires_at <= now` is gone at once, before any
    /// sweeper runs.
    #[must_use]
    pub(crate) fn is_live(&self, now_ms: i64) -> bool {
        self.status != Status::Expired && self.expires_ms > now_ms
    }

    /// Whether the session is active and unexpired.
    #[must_use]
    pub(crate) fn is_active(&self, now_ms: i64) -> bool {
        self.status == Status::Active && self.expires_ms > now_ms
    }

    /// Total messages.
    #[must_use]
    pub fn message_count(&self) -> u64 {
        self.messages_by_role.iter().sum()
    }

    /// The hash fields that store this record. Counters at zero are left out (a missing
    /// counter reads as 0, and counters only grow): a new session is 11 fields instead of 17,
    /// and every field is a Redis argument and a listpack entry the create pays for.
    #[must_use]
    pub(crate) fn to_fields(&self) -> Vec<(String, String)> {
        let mut f = vec![
            ("session_id", self.session_id.clone()),
            ("user_id", self.user_id.clone()),
            ("status", self.status.as_str().to_owned()),
            ("current", u8::from(self.current).to_string()),
            ("metadata", Value::Object(self.metadata.clone()).to_string()),
            ("data", Value::Object(self.data.clone()).to_string()),
            ("created_ms", self.created_ms.to_string()),
            ("updated_ms", self.updated_ms.to_string()),
            ("expires_ms", self.expires_ms.to_string()),
            ("version", self.version.to_string()),
        ];
        let counters = [
            ("tokens_total", self.tokens_total),
            ("cost_micros", self.cost_micros),
        ]
        .into_iter()
        .chain(
            Role::ALL
                .iter()
                .map(|role| role.count_field())
                .zip(self.messages_by_role),
        );
        f.extend(
            counters
                .filter(|(_, n)| *n > 0)
                .map(|(k, n)| (k, n.to_string())),
        );
        let optional = [
            ("org_id", self.org_id.clone()),
            ("title", self.title.clone()),
            ("case_id", self.case_id.clone()),
            ("ended_ms", self.ended_ms.map(|v| v.to_string())),
            ("end_reason", self.end_reason.clone()),
            ("performer_id", self.performer_id.clone()),
            (
                "last_message_ms",
                self.last_message_ms.map(|v| v.to_string()),
            ),
        ];
        f.extend(optional.into_iter().filter_map(|(k, v)| v.map(|v| (k, v))));
        f.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
    }

    /// Fields that [`Record::to_fields`] may leave out; a rewrite deletes those now absent.
    #[must_use]
    pub(crate) fn absent_optional_fields(&self) -> Vec<String> {
        let absent = [
            ("org_id", self.org_id.is_none()),
            ("title", self.title.is_none()),
            ("case_id", self.case_id.is_none()),
            ("ended_ms", self.ended_ms.is_none()),
            ("end_reason", self.end_reason.is_none()),
            ("performer_id", self.performer_id.is_none()),
            ("last_message_ms", self.last_message_ms.is_none()),
        ];
        absent
            .iter()
            .filter(|(_, a)| *a)
            .map(|(k, _)| (*k).to_owned())
            .collect()
    }

    /// Decodes a stored hash; `None` when the hash is empty (no such session).
    ///
    /// # Errors
    /// When a field is missing or malformed (the data was not written by this service).
    pub fn from_fields(fields: Vec<(String, String)>) -> Result<Option<Self>, String> {
        if fields.is_empty() {
            return Ok(None);
        }
        let map: std::collections::HashMap<String, String> = fields.into_iter().collect();
        let text = |k: &str| {
            map.get(k)
                .cloned()
                .ok_or_else(|| format!("field {k} missing"))
        };
        let int = |k: &str| -> Result<i64, String> {
            text(k)?
                .parse()
                .map_err(|_| format!("field {k} is not a number"))
        };
        let uint = |k: &str| -> Result<u64, String> {
            map.get(k).map_or(Ok(0), |v| {
                v.parse().map_err(|_| format!("field {k} is not a number"))
            })
        };
        let object = |k: &str| -> Result<Map<String, Value>, String> {
            match serde_json::from_str(&text(k)?) {
                Ok(Value::Object(m)) => Ok(m),
                _ => Err(format!("field {k} is not a JSON object")),
            }
        };
        let status = match text("status")?.as_str() {
            "active" => Status::Active,
            "ended" => Status::Ended,
            "expired" => Status::Expired,
            other => return Err(format!("unknown status {other}")),
        };
        let mut messages_by_role = [0; 4];
        for (slot, role) in messages_by_role.iter_mut().zip(Role::ALL) {
            *slot = uint(role.count_field())?;
        }
        Ok(Some(Self {
            session_id: text("session_id")?,
            user_id: text("user_id")?,
            org_id: map.get("org_id").cloned(),
            title: map.get("title").cloned(),
            case_id: map.get("case_id").cloned(),
            status,
            current: map.get("current").is_some_and(|v| v == "1"),
            metadata: object("metadata")?,
            data: object("data")?,
            created_ms: int("created_ms")?,
            updated_ms: int("updated_ms")?,
            expires_ms: int("expires_ms")?,
            ended_ms: map.get("ended_ms").and_then(|v| v.parse().ok()),
            end_reason: map.get("end_reason").cloned(),
            performer_id: map.get("performer_id").cloned(),
            version: uint("version")?,
            messages_by_role,
            tokens_total: uint("tokens_total")?,
            cost_micros: uint("cost_micros")?,
            last_message_ms: map.get("last_message_ms").and_then(|v| v.parse().ok()),
        }))
    }

    /// The JSON view of the API and of event payloads.
    #[must_use]
    pub(crate) fn view(&self) -> SessionView {
        SessionView {
            session_id: self.session_id.clone(),
            user_id: self.user_id.clone(),
            org_id: self.org_id.clone(),
            title: self.title.clone(),
            case_id: self.case_id.clone(),
            status: self.status,
            current: self.current,
            metadata: self.metadata.clone(),
            data: self.data.clone(),
            created_at: rfc3339(self.created_ms),
            updated_at: rfc3339(self.updated_ms),
            expires_at: rfc3339(self.expires_ms),
            ended_at: self.ended_ms.map(rfc3339),
            end_reason: self.end_reason.clone(),
            performer_id: self.performer_id.clone(),
            version: self.version,
            message_count: self.message_count(),
            total_tokens: self.tokens_total,
            total_cost: micros_to_cost(self.cost_micros),
        }
    }
}

/// Micro-units to a decimal amount.
#[must_use]
pub(crate) fn micros_to_cost(micros: u64) -> f64 {
    // Exact for any realistic total (< 2^53 micro-units = 9 billion units).
    #[allow(clippy::cast_precision_loss)]
    let units = micros as f64 / 1_000_000.0;
    units
}

/// A session as the API returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub(crate) struct SessionView {
    /// `sess_<shard>_<128-bit base32>`.
    #[schema(example = "sess_3_4k2v7dxq5m3p2wz6yq7n4c5b2a")]
    pub session_id: String,
    pub user_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub org_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub case_id: Option<String>,
    pub status: Status,
    /// Whether this is the user's current session.
    pub current: bool,
    pub metadata: Map<String, Value>,
    /// Conversation state.
    pub data: Map<String, Value>,
    pub created_at: String,
    pub updated_at: String,
    /// Active: when the session expires unless extended by a heartbeat. Ended: when it is purged.
    pub expires_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<String>,
    /// Why the session was ended, when the ender gave a reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_reason: Option<String>,
    /// Who performed the last boundary event (start or end).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub performer_id: Option<String>,
    /// Increases with every change.
    pub version: u64,
    pub message_count: u64,
    pub total_tokens: u64,
    pub total_cost: f64,
}

#[cfg(test)]
impl Record {
    /// An active, current session of `u1` with nothing in it yet, for unit tests.
    pub(crate) fn for_test(session_id: &str) -> Self {
        Self {
            session_id: session_id.into(),
            user_id: "u1".into(),
            org_id: None,
            title: None,
            case_id: None,
            status: Status::Active,
            current: true,
            metadata: Map::new(),
            data: Map::new(),
            created_ms: 1,
            updated_ms: 1,
            expires_ms: 2,
            ended_ms: None,
            end_reason: None,
            performer_id: None,
            version: 1,
            messages_by_role: [0; 4],
            tokens_total: 0,
            cost_micros: 0,
            last_message_ms: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Record {
        Record {
            title: Some("t".into()),
            ..Record::for_test("sess_1_a")
        }
    }

    #[test]
    fn counters_at_zero_are_not_stored_and_read_back_as_zero() {
        let new = record();
        let fields = new.to_fields();
        assert_eq!(fields.len(), 11, "{fields:?}");
        assert!(
            !fields
                .iter()
                .any(|(f, _)| f == "tokens_total" || f == "n_user")
        );
        assert_eq!(Record::from_fields(fields).unwrap(), Some(new));

        let mut counted = record();
        counted.messages_by_role = [2, 1, 0, 0];
        counted.tokens_total = 30;
        counted.cost_micros = 5;
        let fields = counted.to_fields();
        for (field, value) in [
            ("n_user", "2"),
            ("n_assistant", "1"),
            ("tokens_total", "30"),
        ] {
            assert!(
                fields.contains(&(field.to_owned(), value.to_owned())),
                "{field}"
            );
        }
        assert!(!fields.iter().any(|(f, _)| f == "n_system"));
        assert_eq!(Record::from_fields(fields).unwrap(), Some(counted));
    }
}
