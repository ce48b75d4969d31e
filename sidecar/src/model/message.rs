//! Messages of a session (append-only) and the summary over them.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Role {
    User,
    Assistant,
    System,
    Tool,
}

impl Role {
    /// Every role, in the order of `Record::messages_by_role`.
    pub(crate) const ALL: [Role; 4] = [Role::User, Role::Assistant, Role::System, Role::Tool];

    /// Index into `Record::messages_by_role`.
    #[must_use]
    pub(crate) fn index(self) -> usize {
        match self {
            Role::User => 0,
            Role::Assistant => 1,
            Role::System => 2,
            Role::Tool => 3,
        }
    }

    /// The stored counter field of this role.
    #[must_use]
    pub(crate) fn count_field(self) -> &'static str {
        match self {
            Role::User => "n_user",
            Role::Assistant => "n_assistant",
            Role::System => "n_system",
            Role::Tool => "n_tool",
        }
    }
}

/// A stored message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub(crate) struct Message {
    /// UUIDv4.
    pub message_id: String,
    /// Position in the session, from 1; also the pagination cursor.
    pub seq: u64,
    pub role: Role,
    pub content: String,
    pub tokens: u64,
    pub cost: f64,
    pub metadata: Map<String, Value>,
    pub created_at: String,
}

/// Counts and totals of a session's messages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub(crate) struct Summary {
    pub session_id: String,
    pub status: super::Status,
    pub message_count: u64,
    pub messages_by_role: MessagesByRole,
    pub total_tokens: u64,
    pub total_cost: f64,
    pub created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_message_at: Option<String>,
    /// From creation to the end (ended sessions) or to now.
    pub duration_seconds: f64,
}

/// Message counts per role.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub(crate) struct MessagesByRole {
    pub user: u64,
    pub assistant: u64,
    pub system: u64,
    pub tool: u64,
}
