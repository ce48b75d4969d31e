//! Server mode: bearer JWTs, user scoping, the service scope.

use axum::http::{Method, StatusCode};
use jsonwebtoken::{EncodingKey, Header, encode};
use serde_json::json;
use session_sidecar::testing::Auth;

use crate::both_backends;
use crate::harness::{Kind, TestApp};

both_backends!(
    tokens_are_required_and_scope_users,
    during_a_rotation_tokens_of_both_secrets_are_accepted,
);

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

fn token(sub: &str, scope: &str, exp_offset: i64) -> String {
    let exp = chrono::Utc::now().timestamp() + exp_offset;
    encode(
        &Header::default(),
        &json!({"sub": sub, "scope": scope, "exp": exp}),
        &EncodingKey::from_secret(SECRET),
    )
    .unwrap()
}

async fn tokens_are_required_and_scope_users(kind: Kind) {
    // Proves: 401 without a valid token; a user acts only on their own sessions (403
    // otherwise); the service scope may act for anyone and post inbound events.
    let app = TestApp::build(kind, |_| {}, Auth::hs256(SECRET)).await;
    let alice = token("alice", "", 300);
    let bob = token("bob", "sessions:read", 300);
    let service = token("billing", "sessions:service", 300);
    for bad in [None, Some("garbage")] {
        let res = app
            .call_as(bad, Method::GET, "/v1/users/alice/sessions", None)
            .await;
        assert_eq!(res.status, StatusCode::UNAUTHORIZED);
    }
    let expired = token("alice", "", -300);
    assert_eq!(
        app.call_as(
            Some(&expired),
            Method::GET,
            "/v1/users/alice/sessions",
            None
        )
        .await
        .status,
        StatusCode::UNAUTHORIZED
    );
    let forged = encode(
        &Header::default(),
        &json!({"sub": "alice", "exp": chrono::Utc::now().timestamp() + 300}),
        &EncodingKey::from_secret(b"another-secret-another-secret-xx"),
    )
    .unwrap();
    assert_eq!(
        app.call_as(Some(&forged), Method::GET, "/v1/users/alice/sessions", None)
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );

    let res = app
        .call_as(
            Some(&alice),
            Method::POST,
            "/v1/sessions",
            Some(json!({"title": "mine"})),
        )
        .await;
    assert_eq!(
        (res.status, res.body["user_id"].as_str()),
        (StatusCode::CREATED, Some("alice"))
    );
    let id = res.body["session_id"].as_str().unwrap().to_owned();
    let res = app
        .call_as(
            Some(&alice),
            Method::POST,
            "/v1/sessions",
            Some(json!({"user_id": "bob"})),
        )
        .await;
    assert_eq!(res.status, StatusCode::FORBIDDEN);
    for (method, path, body) in [
        (Method::GET, format!("/v1/sessions/{id}"), None),
        (
            Method::PATCH,
            format!("/v1/sessions/{id}"),
            Some(json!({"data": {"a": 1}})),
        ),
        (
            Method::POST,
            format!("/v1/sessions/{id}/end"),
            Some(json!({"performer_id": "bob"})),
        ),
        (Method::DELETE, format!("/v1/sessions/{id}"), None),
        (Method::GET, format!("/v1/sessions/{id}/messages"), None),
        (
            Method::POST,
            format!("/v1/sessions/{id}/messages"),
            Some(json!({"role": "user", "content": "x"})),
        ),
        (Method::GET, "/v1/users/alice/sessions".to_owned(), None),
        (
            Method::GET,
            "/v1/users/alice/current-session".to_owned(),
            None,
        ),
        (Method::GET, "/v1/orgs/acme/sessions".to_owned(), None),
    ] {
        let res = app.call_as(Some(&bob), method.clone(), &path, body).await;
        assert_eq!(
            res.status,
            StatusCode::FORBIDDEN,
            "{method} {path}: {}",
            res.body
        );
    }
    assert_eq!(
        app.call_as(
            Some(&alice),
            Method::GET,
            &format!("/v1/sessions/{id}"),
            None
        )
        .await
        .status,
        StatusCode::OK
    );
    assert_eq!(
        app.call_as(
            Some(&service),
            Method::GET,
            &format!("/v1/sessions/{id}"),
            None
        )
        .await
        .status,
        StatusCode::OK
    );
    let event = json!({"event_id": uuid::Uuid::new_v4().to_string(), "event_type": "auth.user.deleted.v1", "timestamp": "2026-01-01T00:00:00.000Z", "source": "auth", "payload": {"user_id": "alice"}});
    assert_eq!(
        app.call_as(
            Some(&alice),
            Method::POST,
            "/v1/events",
            Some(event.clone())
        )
        .await
        .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        app.call_as(Some(&service), Method::POST, "/v1/events", Some(event))
            .await
            .status,
        StatusCode::OK
    );
    for (token, expected) in [(&alice, StatusCode::FORBIDDEN), (&service, StatusCode::OK)] {
        let res = app
            .call_as(Some(token), Method::GET, "/v1/dead-letters", None)
            .await;
        assert_eq!(res.status, expected, "dead letters need the service scope");
        let res = app
            .call_as(Some(token), Method::POST, "/v1/dead-letters/replay", None)
            .await;
        assert_eq!(res.status, expected, "so does replaying them");
    }
    assert_eq!(
        app.call_as(None, Method::GET, "/healthz", None)
            .await
            .status,
        StatusCode::OK,
        "probes need no token"
    );
}

async fn during_a_rotation_tokens_of_both_secrets_are_accepted(kind: Kind) {
    // Proves: with a second secret (a rotation in progress), a token signed with either is
    // accepted and one signed with a third is refused as a bad signature; an expired token of
    // the second secret is refused as expired, not tried further.
    const NEXT: &[u8] = b"fedcba9876543210fedcba9876543210";
    let app = TestApp::build(kind, |_| {}, Auth::server(&[SECRET, NEXT], None, None)).await;
    let signed = |secret: &[u8], exp_offset: i64| {
        let exp = chrono::Utc::now().timestamp() + exp_offset;
        encode(
            &Header::default(),
            &json!({"sub": "alice", "exp": exp}),
            &EncodingKey::from_secret(secret),
        )
        .unwrap()
    };
    for (token, status, code) in [
        (signed(SECRET, 300), StatusCode::OK, ""),
        (signed(NEXT, 300), StatusCode::OK, ""),
        (
            signed(b"0000000000000000000000000000000x", 300),
            StatusCode::UNAUTHORIZED,
            "token_signature_invalid",
        ),
        (
            signed(NEXT, -300),
            StatusCode::UNAUTHORIZED,
            "token_expired",
        ),
    ] {
        let res = app
            .call_as(Some(&token), Method::GET, "/v1/users/alice/sessions", None)
            .await;
        assert_eq!((res.status, res.code()), (status, code), "{}", res.body);
    }
}
