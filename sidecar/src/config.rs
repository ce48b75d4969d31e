//! Configuration: every setting is one flag and one environment variable, with a documented
//! default. Everything is parsed first and all problems are reported together.

use std::net::SocketAddr;

use clap::{Parser, ValueEnum};

use crate::sessions::{CapPolicy, Policy};
use crate::store::acl::Role;
use crate::store::redis_url::{self, RedisUrl};

/// The prefix of every Redis key unless configured (the operator leaves it so, and limits the
/// Redis users it creates to it).
pub const DEFAULT_KEY_PREFIX: &str = "sess";

/// Where the sidecar listens by default: loopback only, the pod's own port.
pub(crate) const DEFAULT_LISTEN: &str = "127.0.0.1:7070";
/// Default session TTL: 24 hours.
pub(crate) const DEFAULT_TTL_SECONDS: u64 = 24 * 3600;
/// Longest TTL a client may ask for: 7 days.
pub(crate) const DEFAULT_MAX_TTL_SECONDS: u64 = 7 * 24 * 3600;
/// How long ended sessions stay readable: 7 days.
pub(crate) const DEFAULT_ENDED_RETENTION_SECONDS: u64 = 7 * 24 * 3600;
/// Shards of the key space. Fixed at creation: the shard is part of every session id.
pub(crate) const DEFAULT_SHARD_COUNT: u32 = 16;
/// Session creations per user and window (a human creates a handful per hour).
pub(crate) const DEFAULT_CREATE_RATE_LIMIT: u32 = 60;
/// The rate-limit window.
pub(crate) const DEFAULT_CREATE_RATE_WINDOW_SECONDS: u64 = 60;
/// Largest request body: 256 KiB, room for a 64 KiB message or object plus JSON overhead.
pub(crate) const DEFAULT_MAX_BODY_BYTES: usize = 256 * 1024;
/// Undelivered events per shard before writes are refused (the relay is then clearly down).
pub(crate) const DEFAULT_OUTBOX_MAX_LEN: u64 = 100_000;
/// Entries kept in the global events stream.
pub(crate) const DEFAULT_EVENTS_MAX_LEN: u64 = 1_000_000;

/// Local cache size: 64 MiB holds about 50 000 typical sessions.
pub(crate) const DEFAULT_CACHE_MAX_BYTES: u64 = 64 * 1024 * 1024;
/// Bytes of write hints by default: about 13 000 session documents of a few hundred bytes.
pub(crate) const DEFAULT_WRITE_HINTS_MAX_BYTES: u64 = 16 * 1024 * 1024;
/// Hard maximum age of a cached session. Invalidations normally arrive within milliseconds;
/// this bounds staleness only when they cannot (Redis unreachable), and is how long cached
/// sessions keep being served through a Redis outage.
pub(crate) const DEFAULT_CACHE_MAX_AGE_MS: u64 = 10_000;
/// How long a 404 is remembered (shields Redis from floods of unknown ids).
pub(crate) const DEFAULT_CACHE_NEGATIVE_TTL_MS: u64 = 1_000;

/// How the process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// In an application pod: loopback only, trusts the pod, no background work.
    Sidecar,
    /// The session service: listens where told, requires a JWT, runs background work.
    Server,
}

/// Log output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Json,
    Text,
}

/// Command line and environment.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "session-sidecar",
    version,
    about = "Session cache sidecar and session service"
)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "SESSION_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// Also serve `/healthz`, `/readyz` and `/metrics` (nothing else) on this address, e.g.
    /// `0.0.0.0:7071`: kubelet probes and Prometheus cannot reach a loopback-only sidecar.
    #[arg(long, env = "SESSION_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,
    /// `sidecar` or `server`.
    #[arg(long, env = "SESSION_MODE", value_enum, default_value_t = Mode::Sidecar)]
    pub mode: Mode,
    /// Redis URL (`redis://`, or `rediss://` for TLS, trusting the system roots or the CA file
    /// in `SSL_CERT_FILE`); comma-separated seed nodes with `--redis-cluster`.
    /// Absent: the embedded in-process store.
    #[arg(long, env = "SESSION_REDIS_URL")]
    pub redis_url: Option<String>,
    /// Read the Redis URL from this file instead (a mounted Secret), and reread it every few
    /// seconds: new credentials are connected with, without a restart.
    #[arg(long, env = "SESSION_REDIS_URL_FILE", conflicts_with = "redis_url")]
    pub redis_url_file: Option<std::path::PathBuf>,
    /// Speak the Redis Cluster protocol.
    #[arg(long, env = "SESSION_REDIS_CLUSTER", default_value_t = false)]
    pub redis_cluster: bool,
    /// After every write, wait for this many replicas to acknowledge it (`WAIT`); 0 does not
    /// wait. Closes most of the window in which a failover loses an acknowledged write.
    #[arg(long, env = "SESSION_REDIS_WAIT_REPLICAS", default_value_t = 0)]
    pub redis_wait_replicas: u32,
    /// How long a write waits for its replicas, in milliseconds.
    #[arg(long, env = "SESSION_REDIS_WAIT_TIMEOUT_MS", default_value_t = 50)]
    pub redis_wait_timeout_ms: u64,
    /// Prefix of every Redis key.
    #[arg(long, env = "SESSION_KEY_PREFIX", default_value = DEFAULT_KEY_PREFIX)]
    pub key_prefix: String,
    /// Number of shards (1–1024); never change it on existing data.
    #[arg(long, env = "SESSION_SHARD_COUNT", default_value_t = DEFAULT_SHARD_COUNT)]
    pub shard_count: u32,
    /// Default session TTL in seconds.
    #[arg(long, env = "SESSION_TTL_SECONDS", default_value_t = DEFAULT_TTL_SECONDS)]
    pub ttl_seconds: u64,
    /// Longest TTL a client may request, in seconds.
    #[arg(long, env = "SESSION_MAX_TTL_SECONDS", default_value_t = DEFAULT_MAX_TTL_SECONDS)]
    pub max_ttl_seconds: u64,
    /// How long ended sessions stay readable, in seconds.
    #[arg(long, env = "SESSION_ENDED_RETENTION_SECONDS", default_value_t = DEFAULT_ENDED_RETENTION_SECONDS)]
    pub ended_retention_seconds: u64,
    /// Most active sessions per user (unset: unlimited).
    #[arg(long, env = "SESSION_MAX_ACTIVE_PER_USER")]
    pub max_active_per_user: Option<u32>,
    /// At the cap: `reject` (409) or `end-oldest`.
    #[arg(long, env = "SESSION_ACTIVE_CAP_POLICY", value_enum, default_value_t = CapPolicy::Reject)]
    pub active_cap_policy: CapPolicy,
    /// Session creations per user per window; 0 disables the limit.
    #[arg(long, env = "SESSION_CREATE_RATE_LIMIT", default_value_t = DEFAULT_CREATE_RATE_LIMIT)]
    pub create_rate_limit: u32,
    /// The rate-limit window, in seconds.
    #[arg(long, env = "SESSION_CREATE_RATE_WINDOW_SECONDS", default_value_t = DEFAULT_CREATE_RATE_WINDOW_SECONDS)]
    pub create_rate_window_seconds: u64,
    /// Largest accepted request body, in bytes.
    #[arg(long, env = "SESSION_MAX_BODY_BYTES", default_value_t = DEFAULT_MAX_BODY_BYTES)]
    pub max_body_bytes: usize,
    /// Undelivered events per shard before writes are refused with 503.
    #[arg(long, env = "SESSION_OUTBOX_MAX_LEN", default_value_t = DEFAULT_OUTBOX_MAX_LEN)]
    pub outbox_max_len: u64,
    /// Approximate length the global events stream is trimmed to.
    #[arg(long, env = "SESSION_EVENTS_MAX_LEN", default_value_t = DEFAULT_EVENTS_MAX_LEN)]
    pub events_max_len: u64,
    /// HS256 secret for bearer tokens; server mode needs it or an OIDC issuer (or both).
    #[arg(long, env = "SESSION_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// A second HS256 secret tokens may be signed with, while the secret is rotated (the
    /// operator sets it from the JWT Secret's `extra-jwt-secret`).
    #[arg(long, env = "SESSION_JWT_EXTRA_SECRET", hide_env_values = true)]
    pub jwt_extra_secret: Option<String>,
    /// The OIDC identity provider whose tokens server mode accepts (RS256, ES256, EdDSA): the
    /// `iss` they carry, and where its discovery document is
    /// (`<issuer>/.well-known/openid-configuration`). `https://` only.
    #[arg(long, env = "SESSION_OIDC_ISSUER")]
    pub oidc_issuer: Option<String>,
    /// The `aud` the provider's tokens must carry; required with `--oidc-issuer`.
    #[arg(long, env = "SESSION_OIDC_AUDIENCE")]
    pub oidc_audience: Option<String>,
    /// The provider's key set, when it is not to be found through discovery.
    #[arg(long, env = "SESSION_OIDC_JWKS_URL")]
    pub oidc_jwks_url: Option<String>,
    /// A PEM file of the CAs the provider's certificate is checked against (default: the
    /// system's roots, or `SSL_CERT_FILE`).
    #[arg(long, env = "SESSION_OIDC_CA_FILE")]
    pub oidc_ca_file: Option<std::path::PathBuf>,
    /// Let sidecar mode listen on a non-loopback address.
    #[arg(long, env = "SESSION_ALLOW_NON_LOOPBACK", default_value_t = false)]
    pub allow_non_loopback: bool,
    /// Run the background work (relay, sweeper, consumer) even in sidecar mode.
    #[arg(long, env = "SESSION_BACKGROUND_WORK", default_value_t = false)]
    pub background_work: bool,
    /// Bytes of the local session cache; 0 turns the cache off.
    #[arg(long, env = "SESSION_CACHE_MAX_BYTES", default_value_t = DEFAULT_CACHE_MAX_BYTES)]
    pub cache_max_bytes: u64,
    /// Bytes of write hints: the session documents this process wrote or read last and the
    /// current sessions it set, from which its next write to them commits in one call to
    /// Redis instead of a read and a commit; 0 keeps nothing (writes are one call without hints
    /// too, but for a refused write).
    #[arg(long, env = "SESSION_WRITE_HINTS_MAX_BYTES", default_value_t = DEFAULT_WRITE_HINTS_MAX_BYTES)]
    pub write_hints_max_bytes: u64,
    /// Hard maximum age of a cached session, in milliseconds.
    #[arg(long, env = "SESSION_CACHE_MAX_AGE_MS", default_value_t = DEFAULT_CACHE_MAX_AGE_MS)]
    pub cache_max_age_ms: u64,
    /// How long a 404 is cached, in milliseconds.
    #[arg(long, env = "SESSION_CACHE_NEGATIVE_TTL_MS", default_value_t = DEFAULT_CACHE_NEGATIVE_TTL_MS)]
    pub cache_negative_ttl_ms: u64,
    /// The SessionService this process belongs to: the `session_service` label of every metric.
    #[arg(long, env = "SESSION_SERVICE_NAME", default_value = "default")]
    pub service_name: String,
    /// Threads serving requests; 0 picks one in sidecar mode (a sidecar should cost its pod one
    /// core at most, and one thread answers fastest) and every core in server mode.
    #[arg(long, env = "SESSION_WORKER_THREADS", default_value_t = 0)]
    pub worker_threads: usize,
    /// `json` or `text`.
    #[arg(long, env = "SESSION_LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    pub log_format: LogFormat,
}

/// Shortest accepted JWT secret: 256 bits, as HS256 requires.
const MIN_JWT_SECRET_BYTES: usize = 32;

impl Config {
    /// Checks every setting and reports all problems at once.
    ///
    /// # Errors
    /// The list of problems.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        if !(1..=1024).contains(&self.shard_count) {
            problems.push("shard count must be from 1 to 1024".to_owned());
        }
        if self.key_prefix.is_empty() || self.key_prefix.contains(['{', '}', ' ']) {
            problems.push("key prefix must be non-empty, without braces or spaces".to_owned());
        }
        if self.ttl_seconds == 0 || self.ttl_seconds > self.max_ttl_seconds {
            problems.push("TTL must be from 1 second to the maximum TTL".to_owned());
        }
        if self.max_active_per_user == Some(0) {
            problems.push(
                "max active sessions per user must be at least 1 (unset it for no limit)"
                    .to_owned(),
            );
        }
        if self.create_rate_window_seconds == 0 {
            problems.push("the rate-limit window must be at least 1 second".to_owned());
        }
        if self.max_body_bytes < 1024 {
            problems.push("max body bytes must be at least 1024".to_owned());
        }
        if let Some(url) = &self.redis_url
            && let Err(problem) = redis_url::check(url)
        {
            problems.push(problem);
        }
        match self.mode {
            Mode::Server => {
                match (&self.jwt_secret, &self.oidc_issuer) {
                    (None, None) => problems.push(
                        "server mode requires a JWT secret (SESSION_JWT_SECRET) or an OIDC issuer (SESSION_OIDC_ISSUER)"
                            .to_owned(),
                    ),
                    (Some(s), _) if s.len() < MIN_JWT_SECRET_BYTES => {
                        problems.push(format!(
                            "the JWT secret must be at least {MIN_JWT_SECRET_BYTES} bytes"
                        ));
                    }
                    _ => {}
                }
                match (&self.jwt_secret, &self.jwt_extra_secret) {
                    (None, Some(_)) => problems.push(
                        "an extra JWT secret (SESSION_JWT_EXTRA_SECRET) needs the JWT secret too"
                            .to_owned(),
                    ),
                    (_, Some(s)) if s.len() < MIN_JWT_SECRET_BYTES => {
                        problems.push(format!(
                            "the extra JWT secret must be at least {MIN_JWT_SECRET_BYTES} bytes"
                        ));
                    }
                    _ => {}
                }
                if self.oidc_issuer.is_some() && self.oidc_audience.is_none() {
                    problems.push(
                        "an OIDC issuer needs the audience its tokens must carry (SESSION_OIDC_AUDIENCE)"
                            .to_owned(),
                    );
                }
                for url in [&self.oidc_issuer, &self.oidc_jwks_url]
                    .into_iter()
                    .flatten()
                {
                    if !url.starts_with("https://") {
                        problems.push(format!(
                            "the identity provider is reached over https:// only; {url} is not"
                        ));
                    }
                }
            }
            Mode::Sidecar => {
                if !self.listen.ip().is_loopback() && !self.allow_non_loopback {
                    problems.push(format!(
                        "sidecar mode listens on loopback only; {} is not (set --allow-non-loopback to override)",
                        self.listen
                    ));
                }
            }
        }
        if self.cache_max_bytes > 0
            && (self.cache_max_age_ms == 0 || self.cache_max_bytes < 64 * 1024)
        {
            problems.push(
                "a cache needs at least 64 KiB and a maximum age above 0 (or set its size to 0)"
                    .to_owned(),
            );
        }
        if self.service_name.is_empty() {
            problems.push("the service name must not be empty".to_owned());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    /// The Redis URL, current and to come: the flag's, or the URL file's, watched from now on
    /// (see [`crate::store::redis_url`]); `None` for the embedded store.
    ///
    /// # Errors
    /// When the URL file cannot be read or holds no Redis URL, in words naming the file.
    pub(crate) fn redis_url(&self) -> Result<Option<RedisUrl>, String> {
        Ok(match (&self.redis_url_file, &self.redis_url) {
            (Some(path), _) => Some(redis_url::watch_file(
                path.clone(),
                redis_url::read(path)?,
                redis_url::RELOAD_INTERVAL,
            )),
            (None, Some(url)) => Some(redis_url::fixed(url.clone())),
            (None, None) => None,
        })
    }

    /// Whether the store is Redis rather than the embedded one.
    #[must_use]
    pub(crate) fn uses_redis(&self) -> bool {
        self.redis_url.is_some() || self.redis_url_file.is_some()
    }

    /// The session policies these settings describe.
    #[must_use]
    pub(crate) fn policy(&self) -> Policy {
        let ms = |s: u64| {
            i64::try_from(s)
                .unwrap_or(i64::MAX / 1000)
                .saturating_mul(1000)
        };
        Policy {
            shard_count: self.shard_count,
            default_ttl_ms: ms(self.ttl_seconds),
            max_ttl_ms: ms(self.max_ttl_seconds),
            ended_retention_ms: ms(self.ended_retention_seconds),
            max_active_per_user: self.max_active_per_user,
            cap_policy: self.active_cap_policy,
            create_rate_limit: (self.create_rate_limit > 0).then_some(self.create_rate_limit),
            create_rate_window_ms: self.create_rate_window_seconds.saturating_mul(1000),
            outbox_max_len: self.outbox_max_len,
            events_max_len: self.events_max_len,
            write_hints_max_bytes: self.write_hints_max_bytes,
        }
    }

    /// How many runtime threads to use.
    #[must_use]
    pub fn threads(&self) -> usize {
        match (self.worker_threads, self.mode) {
            (0, Mode::Sidecar) => 1,
            (0, Mode::Server) => {
                std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
            }
            (n, _) => n,
        }
    }

    /// The replication wait after writes, if asked for.
    #[must_use]
    pub(crate) fn replica_wait(&self) -> Option<crate::store::redis::ReplicaWait> {
        (self.redis_wait_replicas > 0).then_some(crate::store::redis::ReplicaWait {
            replicas: self.redis_wait_replicas,
            timeout_ms: self.redis_wait_timeout_ms,
        })
    }

    /// The local cache settings, or `None` when the cache is off.
    #[must_use]
    pub(crate) fn cache(&self) -> Option<crate::cache::CacheConfig> {
        (self.cache_max_bytes > 0).then(|| crate::cache::CacheConfig {
            max_bytes: self.cache_max_bytes,
            max_age: std::time::Duration::from_millis(self.cache_max_age_ms),
            negative_ttl: std::time::Duration::from_millis(self.cache_negative_ttl_ms),
        })
    }

    /// The identity provider server mode checks tokens against, when one is configured.
    #[must_use]
    pub(crate) fn identity_provider(&self) -> Option<crate::api::auth::IdpConfig> {
        let (issuer, audience) = (self.oidc_issuer.clone()?, self.oidc_audience.clone()?);
        let mut idp = crate::api::auth::IdpConfig::new(issuer, audience);
        idp.jwks_url.clone_from(&self.oidc_jwks_url);
        idp.ca_file.clone_from(&self.oidc_ca_file);
        Some(idp)
    }

    /// Whether this process runs the relay, the sweeper and the consumer: in server mode, and
    /// always on the embedded store (nobody else can).
    #[must_use]
    pub(crate) fn runs_background_work(&self) -> bool {
        self.mode == Mode::Server || !self.uses_redis() || self.background_work
    }

    /// The Redis role whose ACL rules this process needs: the server's when it runs the
    /// background work, the sidecar's otherwise.
    #[must_use]
    pub(crate) fn redis_role(&self) -> Role {
        if self.mode == Mode::Server || self.background_work {
            Role::Server
        } else {
            Role::Sidecar
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Config {
        Config::try_parse_from(std::iter::once("session-sidecar").chain(args.iter().copied()))
            .unwrap()
    }

    #[test]
    fn defaults_are_valid_and_loopback() {
        let c = parse(&[]);
        assert!(c.validate().is_ok());
        assert!(c.listen.ip().is_loopback());
        assert_eq!(c.mode, Mode::Sidecar);
        assert!(
            c.runs_background_work(),
            "embedded store runs its own background work"
        );
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let c = parse(&[
            "--mode",
            "server",
            "--shard-count",
            "0",
            "--redis-url",
            "http://x",
            "--ttl-seconds",
            "0",
        ]);
        let problems = c.validate().unwrap_err();
        assert_eq!(problems.len(), 4, "{problems:?}");
    }

    #[test]
    fn redis_urls_are_redis_or_rediss() {
        assert!(
            parse(&["--redis-url", "rediss://127.0.0.1:6379"])
                .validate()
                .is_ok()
        );
        let problems = parse(&["--redis-url", "http://127.0.0.1:6379"])
            .validate()
            .unwrap_err();
        assert!(problems[0].contains("rediss://"), "{problems:?}");
    }

    #[test]
    fn sidecar_mode_refuses_public_addresses_unless_told() {
        assert!(parse(&["--listen", "0.0.0.0:7070"]).validate().is_err());
        assert!(
            parse(&["--listen", "0.0.0.0:7070", "--allow-non-loopback"])
                .validate()
                .is_ok()
        );
    }
}
