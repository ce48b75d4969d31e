//! The session model: what is stored, what the API shows, and what the events carry.

pub mod event;
pub mod input;
pub mod message;
pub mod session;

pub use event::{Envelope, EventType};
pub use message::{Message, Role};
pub use session::{Record, SessionView, Status};
