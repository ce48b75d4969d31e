//! The session model: what is stored, what the API shows, and what the events carry.

pub(crate) mod event;
pub(crate) mod input;
pub(crate) mod message;
pub(crate) mod session;

pub(crate) use event::{Envelope, EventType};
pub(crate) use message::{Message, Role};
pub(crate) use session::{Record, SessionView, Status};
