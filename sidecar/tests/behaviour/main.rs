//! The behavioural suite of the session API. Every test runs twice: on the embedded store
//! (`memory::…`) and on a real `redis-server` (`redis::…`); both must behave identically.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod calls;
#[path = "../common/mod.rs"]
mod common;
mod harness;

mod asyncapi;
mod boundary;
mod cache;
mod cancellation;
mod cluster;
mod concurrency;
mod dead_letters;
mod durability;
mod events;
mod fuzz;
mod hints;
mod hostile_input;
mod identity_provider;
mod json_merge;
mod lifecycle;
mod limits;
mod listing;
mod memory_store;
mod messages;
mod metrics;
mod model;
mod named;
mod openapi;
mod outage;
mod redis_users;
mod server_auth;
mod session_view;
mod slow_redis;
mod unread;
