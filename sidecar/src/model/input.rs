//! Request bodies and their validation.
//!
//! Bodies are checked in two steps: first every top-level field name against the fields the
//! request accepts (a server-owned field such as `timestamp` or `event_id` gets `server_field`,
//! anything else unknown gets `unknown_field`), then typed decoding. Both give 400 with a clear
//! message; nothing reaches the store unvalidated.

use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::error::{Error, Result};
use crate::model::Role;

/// Longest user, org, case or performer id, in characters (as JSON Schema counts).
pub(crate) const MAX_ID_CHARS: usize = 128;
/// Longest title, in characters.
pub(crate) const MAX_TITLE_CHARS: usize = 200;
/// Longest message content, in bytes (a long LLM turn is well under this).
pub(crate) const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// Largest serialized `metadata`, `data` or memory object, in bytes.
pub(crate) const MAX_OBJECT_BYTES: usize = 64 * 1024;
/// Largest page of any listing.
pub(crate) const MAX_PAGE_SIZE: usize = 100;
/// Page size when the client gives none.
pub(crate) const DEFAULT_PAGE_SIZE: usize = 20;

/// Fields that only the server sets. Supplying one is an error of its own kind, so that a client
/// that tries to set a timestamp or an event id learns why it was refused.
pub(crate) const SERVER_FIELDS: &[&str] = &[
    "session_id",
    "status",
    "current",
    "created_at",
    "updated_at",
    "expires_at",
    "ended_at",
    "version",
    "message_count",
    "total_tokens",
    "total_cost",
    "timestamp",
    "source",
    "event_id",
    "record_id",
    "message_id",
    "seq",
];

/// Parses a JSON body into `T`, after checking its top-level fields against `allowed`.
///
/// # Errors
/// `malformed_json`, `unknown_field`, `server_field` or `validation_failed`.
pub(crate) fn parse_body<T: for<'de> Deserialize<'de>>(
    bytes: &[u8],
    allowed: &[&str],
) -> Result<T> {
    let value = parse_object(bytes)?;
    check_fields(&value, allowed)?;
    serde_json::from_value(Value::Object(value)).map_err(|e| Error::Validation(e.to_string()))
}

/// Parses a body that must be a JSON object (an empty body counts as `{}`).
///
/// # Errors
/// `malformed_json` or `validation_failed`.
pub(crate) fn parse_object(bytes: &[u8]) -> Result<Map<String, Value>> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice(bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(Error::Validation(
            "the request body must be a JSON object".into(),
        )),
        Err(e) => Err(Error::MalformedJson(e.to_string())),
    }
}

fn check_fields(map: &Map<String, Value>, allowed: &[&str]) -> Result<()> {
    for key in map.keys() {
        if !allowed.contains(&key.as_str()) {
            return Err(if SERVER_FIELDS.contains(&key.as_str()) {
                Error::ServerField(key.clone())
            } else {
                Error::UnknownField(key.clone())
            });
        }
    }
    Ok(())
}

/// Checks an identifier: 1 to [`MAX_ID_CHARS`] characters, no whitespace or control characters.
///
/// # Errors
/// `validation_failed` naming the field.
pub(crate) fn check_id(field: &str, value: &str) -> Result<()> {
    let chars = value.chars().count();
    if chars == 0 || chars > MAX_ID_CHARS {
        return Err(Error::Validation(format!(
            "{field} must be 1 to {MAX_ID_CHARS} characters"
        )));
    }
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(Error::Validation(format!(
            "{field} may not contain whitespace"
        )));
    }
    Ok(())
}

/// Checks a title: 1 to [`MAX_TITLE_CHARS`] characters, not blank, no control characters.
///
/// # Errors
/// `validation_failed`.
pub(crate) fn check_title(title: &str) -> Result<()> {
    let chars = title.chars().count();
    if title.trim().is_empty() || chars > MAX_TITLE_CHARS || title.chars().any(char::is_control) {
        return Err(Error::Validation(format!(
            "title must be 1 to {MAX_TITLE_CHARS} characters, not blank"
        )));
    }
    Ok(())
}

/// Longest end reason, in characters.
pub(crate) const MAX_REASON_CHARS: usize = 1024;

/// Checks an end reason: free text of at most [`MAX_REASON_CHARS`] characters.
///
/// # Errors
/// `validation_failed`.
pub(crate) fn check_reason(reason: &str) -> Result<()> {
    if reason.chars().count() > MAX_REASON_CHARS {
        return Err(Error::Validation(format!(
            "reason must be at most {MAX_REASON_CHARS} characters"
        )));
    }
    Ok(())
}

/// Checks the serialized size of an object.
///
/// # Errors
/// `validation_failed` naming the field.
pub(crate) fn check_object_size(field: &str, value: &Map<String, Value>) -> Result<()> {
    let size = serde_json::to_vec(value).map_or(usize::MAX, |v| v.len());
    if size > MAX_OBJECT_BYTES {
        return Err(too_large(field));
    }
    Ok(())
}

/// The error for an object past [`MAX_OBJECT_BYTES`].
pub(crate) fn too_large(field: &str) -> Error {
    Error::Validation(format!("{field} is larger than {MAX_OBJECT_BYTES} bytes"))
}

/// Present-and-null versus absent, for merge-patch fields.
fn double_option<'de, D, T>(d: D) -> std::result::Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// `POST /v1/sessions`.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSession {
    /// Required, except with a user's bearer token in server mode (then it is the token's user).
    #[schema(
        required = true,
        nullable = false,
        min_length = 1,
        max_length = 128,
        pattern = r"^[^\s\x00-\x1f\x7f]+$"
    )]
    pub user_id: Option<String>,
    #[schema(min_length = 1, max_length = 128, pattern = r"^[^\s\x00-\x1f\x7f]+$")]
    pub org_id: Option<String>,
    /// Unique per user.
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\x00-\x1f\x7f]*[^\s\x00-\x1f\x7f][^\x00-\x1f\x7f]*$"
    )]
    pub title: Option<String>,
    #[schema(min_length = 1, max_length = 128, pattern = r"^[^\s\x00-\x1f\x7f]+$")]
    pub case_id: Option<String>,
    pub metadata: Option<Map<String, Value>>,
    /// Conversation state.
    pub data: Option<Map<String, Value>>,
    /// Who starts the session; defaults to `user_id`. `"system"` for system-started sessions.
    #[schema(min_length = 1, max_length = 128, pattern = r"^[^\s\x00-\x1f\x7f]+$")]
    pub performer_id: Option<String>,
    /// Time to live; defaults to the service's TTL, at most its maximum TTL.
    #[schema(minimum = 1, maximum = 604_800)]
    pub ttl_seconds: Option<u64>,
}

impl CreateSession {
    pub(crate) const FIELDS: &'static [&'static str] = &[
        "user_id",
        "org_id",
        "title",
        "case_id",
        "metadata",
        "data",
        "performer_id",
        "ttl_seconds",
    ];
}

/// `PATCH /v1/sessions/{id}`: a JSON merge patch (RFC 7386) of the mutable fields.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpdateSession {
    /// A new title; `null` removes it.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>, min_length = 1, max_length = 200, pattern = r"^[^\x00-\x1f\x7f]*[^\s\x00-\x1f\x7f][^\x00-\x1f\x7f]*$")]
    pub title: Option<Option<String>>,
    /// Link a case; `null` unlinks it.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>, min_length = 1, max_length = 128, pattern = r"^[^\s\x00-\x1f\x7f]+$")]
    pub case_id: Option<Option<String>>,
    /// Merged into `metadata` (RFC 7386: `null` members are removed).
    pub metadata: Option<Map<String, Value>>,
    /// Merged into `data` (RFC 7386).
    pub data: Option<Map<String, Value>>,
    /// When given, must be the session's owner (403 otherwise).
    #[schema(min_length = 1, max_length = 128, pattern = r"^[^\s\x00-\x1f\x7f]+$")]
    pub user_id: Option<String>,
    /// Recorded in the `session.updated.v1` event.
    #[schema(min_length = 1, max_length = 128, pattern = r"^[^\s\x00-\x1f\x7f]+$")]
    pub performer_id: Option<String>,
}

impl UpdateSession {
    pub(crate) const FIELDS: &'static [&'static str] = &[
        "title",
        "case_id",
        "metadata",
        "data",
        "user_id",
        "performer_id",
    ];
}

/// `PUT /v1/sessions/{id}/heartbeat` (the body is optional).
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Heartbeat {
    /// New time to live from now; defaults to the service's TTL.
    #[schema(minimum = 1, maximum = 604_800)]
    pub ttl_seconds: Option<u64>,
    /// When given, must be the session's owner.
    #[schema(min_length = 1, max_length = 128, pattern = r"^[^\s\x00-\x1f\x7f]+$")]
    pub user_id: Option<String>,
}

impl Heartbeat {
    pub(crate) const FIELDS: &'static [&'static str] = &["ttl_seconds", "user_id"];
}

/// `POST /v1/sessions/{id}/end`: the end boundary event.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct EndSession {
    /// Who ends the session: required; `"system"` for timeouts and cleanups.
    #[schema(
        required = true,
        nullable = false,
        min_length = 1,
        max_length = 128,
        pattern = r"^[^\s\x00-\x1f\x7f]+$"
    )]
    pub performer_id: Option<String>,
    /// The session's owner; another user gets 403.
    #[schema(min_length = 1, max_length = 128, pattern = r"^[^\s\x00-\x1f\x7f]+$")]
    pub user_id: Option<String>,
    /// When given, must equal the id in the path (400 otherwise).
    #[schema(pattern = r"^sess_(0|[1-9][0-9]{0,4})_[a-z2-7]{25}[aeimquy4]$")]
    pub session_id: Option<String>,
    /// Free text, at most 1 024 characters: kept on the session as `end_reason` and carried
    /// in the `session.ended.v1` event.
    #[schema(max_length = 1024)]
    pub reason: Option<String>,
}

impl EndSession {
    pub(crate) const FIELDS: &'static [&'static str] =
        &["performer_id", "user_id", "session_id", "reason"];
}

/// `PUT /v1/users/{user_id}/current-session`: exactly one of the two.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SwitchCurrent {
    pub session_id: Option<String>,
    pub title: Option<String>,
}

impl SwitchCurrent {
    pub(crate) const FIELDS: &'static [&'static str] = &["session_id", "title"];
}

/// `POST /v1/sessions/{id}/messages`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewMessage {
    pub role: Role,
    /// At most 64 KiB of UTF-8.
    #[schema(max_length = 16_384)]
    pub content: String,
    #[serde(default)]
    pub tokens: u64,
    /// A non-negative amount; stored exactly to 6 decimal places.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 1_000_000_000)]
    pub cost: f64,
    #[serde(default)]
    pub metadata: Map<String, Value>,
}

impl NewMessage {
    pub(crate) const FIELDS: &'static [&'static str] =
        &["role", "content", "tokens", "cost", "metadata"];

    /// Checks content size and cost.
    ///
    /// # Errors
    /// `validation_failed`.
    pub(crate) fn validate(&self) -> Result<u64> {
        if self.content.len() > MAX_MESSAGE_BYTES {
            return Err(Error::Validation(format!(
                "content is larger than {MAX_MESSAGE_BYTES} bytes"
            )));
        }
        check_object_size("metadata", &self.metadata)?;
        if !self.cost.is_finite() || self.cost < 0.0 || self.cost > 1e9 {
            return Err(Error::Validation(
                "cost must be a number from 0 to 1e9".into(),
            ));
        }
        // In range by the check above, so the conversion is exact to the micro-unit.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let micros = (self.cost * 1_000_000.0).round() as u64;
        Ok(micros)
    }
}
