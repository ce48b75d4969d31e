//! Server mode with tokens from an identity provider: a real HTTPS OIDC provider started here
//! (discovery document and key set, its certificate from a CA made here) with real generated
//! RSA, EC P-256 and Ed25519 keys. Every accepted and refused case, key rotation mid-test, the
//! rate limit on unknown keys, the provider going down (cached keys keep working, unknown
//! keys are refused, never let through) and a provider that never answers (bounded wait).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};
use session_sidecar::testing::Metrics;
use session_sidecar::testing::{Auth, IdentityProvider, IdpConfig};

use crate::harness::{Kind, TestApp};

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
const AUDIENCE: &str = "session-service";

/// A signing key and its published form.
struct SigningKey {
    kid: String,
    alg: Algorithm,
    private: EncodingKey,
    public: Jwk,
}

impl SigningKey {
    fn new(kid: &str, alg: Algorithm, private: EncodingKey) -> Self {
        let mut public = Jwk::from_encoding_key(&private, alg).unwrap();
        public.common.key_id = Some(kid.to_owned());
        Self {
            kid: kid.to_owned(),
            alg,
            private,
            public,
        }
    }

    fn ec(kid: &str) -> Self {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        Self::new(
            kid,
            Algorithm::ES256,
            EncodingKey::from_ec_der(&pair.serialize_der()),
        )
    }

    fn ed(kid: &str) -> Self {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        // jsonwebtoken derives public keys from PKCS#8 v1 only; rcgen writes v2, which holds
        // the public key itself.
        let public = serde_json::from_value(json!({
            "kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "kid": kid,
            "x": data_encoding::BASE64URL_NOPAD.encode(pair.public_key_raw()),
        }))
        .unwrap();
        Self {
            kid: kid.to_owned(),
            alg: Algorithm::EdDSA,
            private: EncodingKey::from_ed_der(&pair.serialize_der()),
            public,
        }
    }

    /// RSA 2048 from `openssl` (PKCS#1, as jsonwebtoken reads it).
    fn rsa(kid: &str, dir: &std::path::Path) -> Self {
        let pem = dir.join(format!("{kid}.pem"));
        let der = dir.join(format!("{kid}.der"));
        let run = |args: &[&str]| {
            assert!(
                Command::new("openssl")
                    .args(args)
                    .stderr(std::process::Stdio::null())
                    .status()
                    .unwrap()
                    .success(),
                "openssl {args:?}"
            );
        };
        run(&[
            "genrsa",
            "-traditional",
            "-out",
            pem.to_str().unwrap(),
            "2048",
        ]);
        run(&[
            "rsa",
            "-in",
            pem.to_str().unwrap(),
            "-traditional",
            "-outform",
            "DER",
            "-out",
            der.to_str().unwrap(),
        ]);
        Self::new(
            kid,
            Algorithm::RS256,
            EncodingKey::from_rsa_der(&std::fs::read(der).unwrap()),
        )
    }

    fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        encode(&header, claims, &self.private).unwrap()
    }
}

/// The provider: `/.well-known/openid-configuration` and `/jwks` over HTTPS on loopback.
struct Provider {
    issuer: String,
    ca_file: PathBuf,
    keys: Arc<Mutex<Vec<Jwk>>>,
    fetches: Arc<AtomicUsize>,
    handle: axum_server::Handle<SocketAddr>,
}

impl Provider {
    async fn start(dir: &std::path::Path) -> Self {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = rcgen::CertifiedIssuer::self_signed(ca, ca_key).unwrap();
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .signed_by(&leaf_key, &ca)
            .unwrap();
        let ca_file = dir.join("idp-ca.pem");
        std::fs::write(&ca_file, ca.pem()).unwrap();

        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let issuer = format!("https://localhost:{port}");
        let keys: Arc<Mutex<Vec<Jwk>>> = Arc::default();
        let fetches = Arc::new(AtomicUsize::new(0));
        let discovery = json!({"issuer": issuer, "jwks_uri": format!("{issuer}/jwks")});
        let app = axum::Router::new()
            .route(
                "/.well-known/openid-configuration",
                axum::routing::get(move || {
                    let discovery = discovery.clone();
                    async move { axum::Json(discovery) }
                }),
            )
            .route(
                "/jwks",
                axum::routing::get({
                    let (keys, fetches) = (keys.clone(), fetches.clone());
                    move || {
                        fetches.fetch_add(1, Ordering::SeqCst);
                        let set = JwkSet {
                            keys: keys.lock().unwrap().clone(),
                        };
                        async move { axum::Json(set) }
                    }
                }),
            );
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone()],
                rustls::pki_types::PrivateKeyDer::try_from(leaf_key.serialize_der()).unwrap(),
            )
            .unwrap();
        let handle = axum_server::Handle::new();
        let server = axum_server::from_tcp_rustls(
            listener,
            axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(tls)),
        )
        .unwrap()
        .handle(handle.clone());
        tokio::spawn(server.serve(app.into_make_service()));
        Self {
            issuer,
            ca_file,
            keys,
            fetches,
            handle,
        }
    }

    fn publish(&self, keys: &[&SigningKey]) {
        *self.keys.lock().unwrap() = keys.iter().map(|k| k.public.clone()).collect();
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }

    fn config(&self) -> IdpConfig {
        IdpConfig {
            issuer: self.issuer.clone(),
            audience: AUDIENCE.to_owned(),
            jwks_url: None,
            ca_file: Some(self.ca_file.clone()),
            unknown_key_refresh_every: Duration::from_millis(300),
        }
    }
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn claims(issuer: &str, sub: &str) -> Value {
    json!({"iss": issuer, "aud": AUDIENCE, "sub": sub, "exp": now() + 300, "iat": now()})
}

/// The problem code a listing with `token` answers (`ok` for 200).
async fn verdict(app: &TestApp, token: &str) -> String {
    let res = app
        .call_as(Some(token), Method::GET, "/v1/users/alice/sessions", None)
        .await;
    if res.status == StatusCode::OK {
        return "ok".to_owned();
    }
    assert_eq!(res.status, StatusCode::UNAUTHORIZED, "{}", res.body);
    res.body["code"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_from_the_identity_provider_are_verified_against_its_published_keys() {
    let dir = tempfile::tempdir().unwrap();
    let idp = Provider::start(dir.path()).await;
    let (rsa, ec, ed) = (
        SigningKey::rsa("rsa-1", dir.path()),
        SigningKey::ec("ec-1"),
        SigningKey::ed("ed-1"),
    );
    idp.publish(&[&rsa, &ec, &ed]);
    let metrics = Metrics::new("test");
    let provider = IdentityProvider::new(idp.config(), metrics.clone());
    provider.refresh("scheduled").await.unwrap();
    let app = TestApp::build(
        Kind::Memory,
        |_| {},
        Auth::server(&[SECRET], Some(provider.clone()), Some(metrics.clone())),
    )
    .await;

    // Each algorithm: a user acts on their own sessions only; the service scope on anyone's.
    for key in [&rsa, &ec, &ed] {
        let alice = key.sign(&claims(&idp.issuer, "alice"));
        let res = app
            .call_as(Some(&alice), Method::POST, "/v1/sessions", Some(json!({})))
            .await;
        assert_eq!(
            res.status,
            StatusCode::CREATED,
            "{:?}: {}",
            key.alg,
            res.body
        );
        assert_eq!(res.body["user_id"], "alice");
        let bob = key.sign(&claims(&idp.issuer, "bob"));
        let res = app
            .call_as(Some(&bob), Method::GET, "/v1/users/alice/sessions", None)
            .await;
        assert_eq!(res.status, StatusCode::FORBIDDEN, "{:?}", key.alg);
        let mut service = claims(&idp.issuer, "billing");
        service["scp"] = json!(["sessions:service"]);
        assert_eq!(
            verdict(&app, &key.sign(&service)).await,
            "ok",
            "{:?}",
            key.alg
        );
    }
    // The shared secret keeps working beside the provider.
    let hs = encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": "alice", "exp": now() + 300}),
        &EncodingKey::from_secret(SECRET),
    )
    .unwrap();
    assert_eq!(verdict(&app, &hs).await, "ok");

    // Every refusal has its code.
    let with = |change: &dyn Fn(&mut Value)| {
        let mut c = claims(&idp.issuer, "alice");
        change(&mut c);
        ec.sign(&c)
    };
    let cases: Vec<(&str, String)> = vec![
        ("token_expired", with(&|c| c["exp"] = json!(now() - 120))),
        ("ok", with(&|c| c["exp"] = json!(now() - 10))), // within the leeway
        (
            "token_not_yet_valid",
            with(&|c| c["nbf"] = json!(now() + 120)),
        ),
        (
            "token_wrong_issuer",
            with(&|c| c["iss"] = json!("https://elsewhere.example")),
        ),
        (
            "token_wrong_audience",
            with(&|c| c["aud"] = json!("another-service")),
        ),
        (
            "token_malformed",
            with(&|c| {
                c.as_object_mut().unwrap().remove("sub");
            }),
        ),
        ("token_malformed", "not.a.jwt".to_owned()),
        ("token_malformed", "garbage".to_owned()),
    ];
    for (expected, token) in &cases {
        assert_eq!(&verdict(&app, token).await, expected, "{token}");
    }
    // `alg: none`, unsigned.
    let b64 = |v: &Value| data_encoding::BASE64URL_NOPAD.encode(v.to_string().as_bytes());
    let none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&claims(&idp.issuer, "alice"))
    );
    assert_eq!(verdict(&app, &none).await, "token_algorithm_refused");
    // Algorithm confusion: HS256 "signed" with the RSA key's public JWK as the HMAC secret.
    let confused = {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("rsa-1".to_owned());
        let public = serde_json::to_vec(&rsa.public).unwrap();
        encode(
            &header,
            &claims(&idp.issuer, "alice"),
            &EncodingKey::from_secret(&public),
        )
        .unwrap()
    };
    assert_eq!(verdict(&app, &confused).await, "token_signature_invalid");
    // A key of the wrong type: an ES256 token naming the RSA key.
    let wrong_type = {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some("rsa-1".to_owned());
        encode(&header, &claims(&idp.issuer, "alice"), &ec.private).unwrap()
    };
    assert_eq!(verdict(&app, &wrong_type).await, "token_algorithm_refused");
    // Signed by a key the provider never published.
    let stranger = SigningKey::ec("ec-unpublished");
    assert_eq!(
        verdict(&app, &stranger.sign(&claims(&idp.issuer, "alice"))).await,
        "token_unknown_key"
    );
    assert_eq!(
        verdict(&app, &ec.sign(&claims(&idp.issuer, "alice"))).await,
        "ok"
    );

    // Rotation: the provider publishes ec-2 and drops ec-1; a token with the new key is
    // accepted at once (its unknown kid triggers a fetch), the retired key is refused.
    tokio::time::sleep(Duration::from_millis(350)).await;
    let ec2 = SigningKey::ec("ec-2");
    idp.publish(&[&rsa, &ec2, &ed]);
    assert_eq!(
        verdict(&app, &ec2.sign(&claims(&idp.issuer, "alice"))).await,
        "ok"
    );
    assert_eq!(
        verdict(&app, &ec.sign(&claims(&idp.issuer, "alice"))).await,
        "token_unknown_key"
    );

    // A flood of made-up kids costs the provider one fetch per interval.
    tokio::time::sleep(Duration::from_millis(350)).await;
    let before = idp.fetches();
    let flood = Instant::now();
    for n in 0..200 {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(format!("random-{n}"));
        let token = encode(&header, &claims(&idp.issuer, "alice"), &ec2.private).unwrap();
        assert_eq!(verdict(&app, &token).await, "token_unknown_key");
    }
    let (flood_fetches, took) = (idp.fetches() - before, flood.elapsed());
    println!("200 tokens with unknown kids in {took:?}: {flood_fetches} key-set fetch(es)");
    // One per 300 ms interval begun, at most.
    let intervals = usize::try_from(took.as_millis() / 300).unwrap() + 1;
    assert!(
        flood_fetches <= intervals,
        "{flood_fetches} fetches in {took:?}"
    );

    // The provider goes down: cached keys keep working, an unknown key is refused.
    idp.handle.shutdown();
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(
        verdict(&app, &rsa.sign(&claims(&idp.issuer, "alice"))).await,
        "ok"
    );
    let newer = SigningKey::ed("ed-2");
    let started = Instant::now();
    assert_eq!(
        verdict(&app, &newer.sign(&claims(&idp.issuer, "alice"))).await,
        "token_unknown_key"
    );
    println!(
        "unknown key with the provider down: refused in {:?}",
        started.elapsed()
    );

    let count = |result: &str| metrics.auth_outcomes.with_label_values(&[result]).get();
    assert!(
        count("accepted") >= 10 && count("token_expired") == 1 && count("token_unknown_key") >= 200
    );
    let refreshes = |trigger: &str, result: &str| {
        metrics
            .jwks_refreshes
            .with_label_values(&[trigger, result])
            .get()
    };
    assert!(
        refreshes("unknown_key", "ok") >= 2,
        "{}",
        refreshes("unknown_key", "ok")
    );
    assert!(refreshes("unknown_key", "rate_limited") >= 150);
    assert!(refreshes("unknown_key", "failed") >= 1);
    assert_eq!(metrics.jwks_keys.get(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_that_never_answers_delays_a_request_by_the_bound_at_most_and_opens_the_circuit()
{
    let dir = tempfile::tempdir().unwrap();
    let idp = Provider::start(dir.path()).await;
    let ec = SigningKey::ec("ec-1");
    idp.publish(&[&ec]);
    let metrics = Metrics::new("test");
    // The key set's URL is a listener that accepts and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut config = idp.config();
    config.jwks_url = Some(format!(
        "https://localhost:{}/jwks",
        silent.local_addr().unwrap().port()
    ));
    let provider = IdentityProvider::new(config, metrics.clone());
    let app = TestApp::build(
        Kind::Memory,
        |_| {},
        Auth::server(&[], Some(provider.clone()), Some(metrics.clone())),
    )
    .await;
    let token = ec.sign(&claims(&idp.issuer, "alice"));
    let mut waits = Vec::new();
    for _ in 0..4 {
        let started = Instant::now();
        assert_eq!(verdict(&app, &token).await, "token_unknown_key");
        waits.push(started.elapsed());
        tokio::time::sleep(Duration::from_millis(350)).await;
    }
    println!("requests waiting on a silent provider: {waits:?}");
    let bound = session_sidecar::testing::REQUEST_WAIT + Duration::from_millis(500);
    assert!(waits.iter().all(|w| *w < bound), "{waits:?}");
    assert!(
        waits[0] >= Duration::from_millis(1900),
        "the first one waited for the fetch"
    );
    assert_eq!(
        metrics.jwks_circuit_state.get(),
        2,
        "open after repeated failures"
    );
    assert!(
        waits[3] < Duration::from_millis(100),
        "refused at once while open: {waits:?}"
    );
    // Without a shared secret, an HS256 token is refused for its algorithm.
    let hs = encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": "alice", "exp": now() + 300}),
        &EncodingKey::from_secret(SECRET),
    )
    .unwrap();
    assert_eq!(verdict(&app, &hs).await, "token_algorithm_refused");
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_rotation_at_the_provider_fails_no_request_under_load() {
    // Proves: the provider rotating its signing key the usual way (publish the new key beside
    // the old one, sign with the new one, withdraw the old one) while requests keep coming
    // refuses none of them, with the production rate limit on unknown-key refreshes (10 s):
    // the first token with the new key fetches the key set once.
    let dir = tempfile::tempdir().unwrap();
    let idp = Provider::start(dir.path()).await;
    let (old, new) = (SigningKey::ec("ec-old"), SigningKey::ec("ec-new"));
    idp.publish(&[&old]);
    let metrics = Metrics::new("test");
    let config = IdpConfig {
        unknown_key_refresh_every: Duration::from_secs(10),
        ..idp.config()
    };
    let provider = IdentityProvider::new(config, metrics.clone());
    provider.refresh("scheduled").await.unwrap();
    let app = Arc::new(
        TestApp::build(
            Kind::Memory,
            |_| {},
            Auth::server(&[], Some(provider.clone()), Some(metrics.clone())),
        )
        .await,
    );
    let token = Arc::new(Mutex::new(old.sign(&claims(&idp.issuer, "alice"))));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let (app, token, stop) = (app.clone(), token.clone(), stop.clone());
        clients.spawn(async move {
            let (mut sent, mut refused) = (0u32, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                let bearer = token.lock().unwrap().clone();
                let verdict = verdict(&app, &bearer).await;
                sent += 1;
                if verdict != "ok" {
                    refused.push(verdict);
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            (sent, refused)
        });
    }
    let fetches_before = idp.fetches();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rotation = Instant::now();
    idp.publish(&[&old, &new]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    *token.lock().unwrap() = new.sign(&claims(&idp.issuer, "alice"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    idp.publish(&[&new]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let took = rotation.elapsed();
    stop.store(true, Ordering::Relaxed);
    let (mut sent, mut refused) = (0, Vec::new());
    while let Some(result) = clients.join_next().await {
        let (n, r) = result.unwrap();
        sent += n;
        refused.extend(r);
    }
    let fetches = idp.fetches() - fetches_before;
    println!(
        "provider key rotated in {took:.2?} under load: {sent} requests, {} refused, {fetches} key-set fetch(es)",
        refused.len()
    );
    assert!(sent > 100, "the load ran: {sent}");
    assert!(
        refused.is_empty(),
        "refused during the rotation: {refused:?}"
    );
    assert_eq!(fetches, 1, "the new key cost one fetch");
}
