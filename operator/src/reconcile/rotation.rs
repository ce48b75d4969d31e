//! Rotating the Redis users' passwords without a failed request (the JWT key:
//! [`super::jwt_rotation`]).
//!
//! `kubectl annotate sessionservice NAME sessions.io/rotate-redis-passwords=<any new value>`
//! asks for new passwords of the `admin`, `server`, `sidecar` and `replication` users. For each
//! user:
//!
//! 1. **Both passwords.** A new password is generated; every Redis node accepts the new and the
//!    old one (`ACL SETUSER <user> resetpass #new #old`), and only then is the user's Secret
//!    written with the new password (`password`, `url`) and the old one kept as
//!    `previous-password`, with the request and the time (`rotation-request`, `rotated-at`).
//! 2. **Clients move.** The operator reads its Secret on every reconcile; the session-service
//!    Deployment rolls (its template carries a digest of the password); injected sidecars
//!    reread theirs from their mounted Secret, which the kubelet updates within its sync
//!    period (waited for, plus the sidecars' reread interval: no signal says when). Sidecars
//!    injected by an older release read it only at start: the status names their pods to
//!    restart. Replicas get the new replication password from the operator (`CONFIG SET
//!    masterauth`), the Redis pods' probes from their mounted Secret, waited for likewise.
//! 3. **Old password off.** Once every client of the user started after the new password was
//!    written, the nodes drop the old one, then the Secret does.
//!
//! Every step is decided from the Secrets and the pods, so a reconcile killed at any point
//! resumes: a Secret holding `previous-password` is a rotation in progress, and the nodes are
//! told the passwords the Secrets hold (plus a new one not written yet) before each write.
//! Connections already open stay authenticated through a rotation, so nothing is dropped.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use session_sidecar::contract::acl::password_hash;

use super::Context;
use crate::INJECT_LABEL;
use crate::cluster::{Access, Member, node};
use crate::crd::{RedisMode, SessionService};
use crate::resources::redis::{self, RedisUser};
use crate::resources::server::{REDIS_URL_FILE_ENV, redis_credentials_digest};
use crate::resources::{Names, RedisPasswords, Rotated, Secrets, random_token, selector_query};
use session_sidecar::contract::RELOAD_INTERVAL;

/// The annotation that asks for a rotation; a value different from the last rotation's asks
/// for another.
pub(crate) const ROTATE_ANNOTATION: &str = "sessions.io/rotate-redis-passwords";

/// The annotation on the session-service pod template with a digest of the server user's
/// password: a pod carrying the new digest started after the new password was written.
pub(crate) const CREDENTIALS_ANNOTATION: &str = "sessions.io/redis-credentials";

/// How often a rotation in progress is looked at again.
pub(crate) const ROTATION_CHECK: Duration = Duration::from_secs(10);

/// What this reconcile did about a rotation, for the status.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct RotationReport {
    /// In words; `None` when no rotation was ever asked for.
    pub message: Option<String>,
    /// A rotation is in progress: look again soon.
    pub in_progress: bool,
}

/// Starts, advances or finishes a rotation of `secrets`' Redis passwords; `secrets` leaves with
/// what the Secrets must hold after this reconcile.
pub(crate) async fn advance(
    ctx: &Context,
    ss: &SessionService,
    namespace: &str,
    secrets: &mut Secrets,
) -> RotationReport {
    if ss.spec.redis.mode == RedisMode::External {
        return RotationReport::default();
    }
    let before = secrets.redis.clone();
    let passwords = &mut secrets.redis;
    let requested = requested(ss, ROTATE_ANNOTATION);
    // Injected pods created from this second on started after the new password was written
    // (in this reconcile, milliseconds from now): `creationTimestamp` has whole seconds.
    let moved_after = Timestamp::from_second(Timestamp::now().as_second() + 2)
        .unwrap_or_else(|_| Timestamp::now());
    let mut started = Vec::new();
    if let Some(request) = &requested {
        for user in RedisUser::ROTATED {
            let done_before = passwords.rotated.get(&user).map(|r| &r.request) == Some(request);
            if !done_before && !passwords.previous.contains_key(&user) {
                let old = std::mem::replace(user.password_mut(passwords), random_token());
                passwords.previous.insert(user, old);
                passwords.rotated.insert(
                    user,
                    Rotated {
                        request: request.clone(),
                        at: moved_after.to_string(),
                    },
                );
                started.push(user);
            }
        }
    }
    if passwords.previous.is_empty() {
        return RotationReport {
            message: last_rotation(passwords),
            in_progress: false,
        };
    }
    let client = &ctx.client;
    // Who still holds an old password. A user whose new password is not written yet (started
    // in this reconcile) cannot be done.
    let mut waiting: BTreeMap<RedisUser, String> = BTreeMap::new();
    let server_digest = redis_credentials_digest(passwords);
    let settle = ctx.secret_volume_settle;
    for user in passwords.previous.keys().copied().collect::<Vec<_>>() {
        if started.contains(&user) {
            waiting.insert(user, "its new password is being written".to_owned());
            continue;
        }
        let since = rotated_at(passwords, user);
        match still_on_old_password(client, ss, namespace, user, since, &server_digest, settle)
            .await
        {
            Ok(old) if old.is_empty() => {}
            Ok(old) => {
                waiting.insert(user, old);
            }
            Err(message) => {
                waiting.insert(user, message);
            }
        }
    }
    // Tell every node the passwords each user has from now on, before any Secret says so.
    let mut finishing: Vec<RedisUser> = Vec::new();
    for user in passwords.previous.keys() {
        if !waiting.contains_key(user) {
            finishing.push(*user);
        }
    }
    let mut target = passwords.clone();
    for user in &finishing {
        target.previous.remove(user);
    }
    let result = match super::cluster::access(ctx, ss, namespace, secrets).await {
        Ok(access) => set_passwords(client, ss, namespace, &target, &secrets.redis, access).await,
        Err(message) => Err(message),
    };
    if let Err(message) = result {
        // Nothing is written that the nodes do not accept: the rotations started here wait
        // for the next reconcile, which starts them afresh.
        let passwords = &mut secrets.redis;
        for user in &started {
            *user.password_mut(passwords) = user.password(&before).to_owned();
            passwords.previous.remove(user);
            match before.rotated.get(user) {
                Some(rotated) => passwords.rotated.insert(*user, rotated.clone()),
                None => passwords.rotated.remove(user),
            };
        }
        return RotationReport {
            message: Some(format!(
                "rotating the Redis passwords: cannot update the Redis users yet: {message}"
            )),
            in_progress: true,
        };
    }
    let report = if waiting.is_empty() {
        RotationReport {
            message: last_rotation(&target),
            in_progress: false,
        }
    } else {
        let done: Vec<&str> = RedisUser::ROTATED
            .iter()
            .filter(|u| !waiting.contains_key(u))
            .map(|u| u.name())
            .collect();
        let mut words = vec![format!(
            "rotating the Redis passwords (request {}): the old passwords are still accepted",
            requested.as_deref().unwrap_or("?")
        )];
        if !done.is_empty() {
            words.push(format!("done: {}", done.join(", ")));
        }
        for (user, why) in &waiting {
            words.push(format!("{}: {why}", user.name()));
        }
        RotationReport {
            message: Some(words.join("; ")),
            in_progress: true,
        }
    };
    secrets.redis = target;
    report
}

fn rotated_at(passwords: &RedisPasswords, user: RedisUser) -> Timestamp {
    passwords
        .rotated
        .get(&user)
        .and_then(|r| r.at.parse().ok())
        // Unknown: every pod counts as old until it restarts from now on.
        .unwrap_or_else(Timestamp::now)
}

/// The last rotation, in words, once it is over.
fn last_rotation(passwords: &RedisPasswords) -> Option<String> {
    let last = passwords.rotated.values().max_by(|a, b| a.at.cmp(&b.at))?;
    Some(format!(
        "Redis passwords rotated for request {} (new passwords written at {}); every client holds the new ones and the old passwords are refused",
        last.request, last.at
    ))
}

/// The clients of `user` that started before its new password was written, in words (empty
/// when none): the session-service pods without the new password's digest for `server`
/// (including pods still shutting down); for `sidecar` the injected pods created before
/// `since`, those rereading the mounted Secret only until it settled; for `replication` the
/// Redis pods until their mounted Secret settled; none for `admin` (the operator reads its
/// Secret on every reconcile).
async fn still_on_old_password(
    client: &Client,
    ss: &SessionService,
    namespace: &str,
    user: RedisUser,
    since: Timestamp,
    server_digest: &str,
    settle: Duration,
) -> Result<String, String> {
    match user {
        RedisUser::Admin => Ok(String::new()),
        // The replicas got the new password (`CONFIG SET masterauth`) with the nodes; the
        // probes read it from the mounted Secret, which the kubelet updates within its sync
        // period, and no signal says when it did.
        RedisUser::Replication => {
            let settled = settled(since, settle);
            Ok(if Timestamp::now() < settled {
                format!(
                    "waiting until {settled} for the kubelet to give the Redis pods' probes the new password (their mounted Secret)"
                )
            } else {
                String::new()
            })
        }
        RedisUser::Server => {
            let old =
                server_pods_without(client, ss, namespace, CREDENTIALS_ANNOTATION, server_digest)
                    .await?;
            Ok(if old.is_empty() {
                String::new()
            } else {
                format!(
                    "waiting for {} session-service pod(s) on the old password to be replaced (the Deployment rolls): {}",
                    old.len(),
                    old.join(", ")
                )
            })
        }
        RedisUser::Sidecar => {
            let labels = format!("{INJECT_LABEL}={}", ss.name_any());
            let injected = pods(client, namespace, &labels, "injected").await?;
            let before: Vec<&Pod> = injected
                .iter()
                .filter(|pod| {
                    pod.metadata
                        .creation_timestamp
                        .as_ref()
                        .is_none_or(|t| t.0 < since)
                })
                .collect();
            let (rereading, restart): (Vec<&Pod>, Vec<&Pod>) =
                before.into_iter().partition(|pod| rereads_redis_url(pod));
            // Their sidecars have it once the kubelet updated the mounted Secret and they
            // reread it.
            let settled = settled(since, settle + RELOAD_INTERVAL);
            let mut waiting = Vec::new();
            if !restart.is_empty() {
                waiting.push(format!(
                    "waiting for {} injected pod(s) created before {since} to restart (their sidecars, injected by an older release, read the password only at start: kubectl rollout restart their workloads): {}",
                    restart.len(),
                    restart.iter().map(|pod| pod.name_any()).collect::<Vec<_>>().join(", ")
                ));
            }
            if !rereading.is_empty() && Timestamp::now() < settled {
                waiting.push(format!(
                    "waiting until {settled} for the kubelet to give {} injected sidecar(s) the new password (their mounted Secret, reread every {} s)",
                    rereading.len(),
                    RELOAD_INTERVAL.as_secs()
                ));
            }
            Ok(waiting.join("; "))
        }
    }
}

/// When a mounted Secret written at `since` has reached every pod: `settle` later.
fn settled(since: Timestamp, settle: Duration) -> Timestamp {
    since + SignedDuration::try_from(settle).unwrap_or(SignedDuration::from_secs(120))
}

/// Whether `pod`'s injected sidecar rereads its Redis URL from the mounted Secret (injected
/// by a release that mounts it) rather than reading it once at start.
fn rereads_redis_url(pod: &Pod) -> bool {
    pod.spec
        .iter()
        .flat_map(|spec| {
            spec.containers
                .iter()
                .chain(spec.init_containers.iter().flatten())
        })
        .filter(|container| container.name == crate::inject::CONTAINER)
        .flat_map(|container| container.env.iter().flatten())
        .any(|env| env.name == REDIS_URL_FILE_ENV)
}

/// The rotation `annotation` asks for: its value, unless empty.
pub(super) fn requested(ss: &SessionService, annotation: &str) -> Option<String> {
    ss.annotations()
        .get(annotation)
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// Whether `pod` carries `annotation` with `value` (from its template).
pub(super) fn carries(pod: &Pod, annotation: &str, value: &str) -> bool {
    pod.annotations().get(annotation).map(String::as_str) == Some(value)
}

/// The session-service pods whose template did not carry `annotation` = `value`.
pub(super) async fn server_pods_without(
    client: &Client,
    ss: &SessionService,
    namespace: &str,
    annotation: &str,
    value: &str,
) -> Result<Vec<String>, String> {
    let labels = selector_query(ss, "server");
    Ok(pods(client, namespace, &labels, "session-service")
        .await?
        .iter()
        .filter(|pod| !carries(pod, annotation, value))
        .map(ResourceExt::name_any)
        .collect())
}

/// The pods of `namespace` with `labels`; `what` names them in the error.
async fn pods(
    client: &Client,
    namespace: &str,
    labels: &str,
    what: &str,
) -> Result<Vec<Pod>, String> {
    Api::<Pod>::namespaced(client.clone(), namespace)
        .list(&ListParams::default().labels(labels))
        .await
        .map(|list| list.items)
        .map_err(|e| {
            format!(
                "could not list the {what} pods ({labels}) in {namespace}: {}; check the operator's RBAC (pods: list)",
                super::api_message(&e)
            )
        })
}

/// Sets each client user's passwords on every Redis node to those of `target` (its password,
/// and its previous one while it is rotating), connecting as admin with the password the node
/// accepts now (`target`'s, or the one `current` still keeps).
async fn set_passwords(
    client: &Client,
    ss: &SessionService,
    namespace: &str,
    target: &RedisPasswords,
    current: &RedisPasswords,
    access: Access,
) -> Result<(), String> {
    let members = redis_members(client, ss, namespace).await?;
    // The new admin password once the nodes know it, the old one until then.
    let mut admin_passwords = vec![target.admin.clone()];
    admin_passwords.extend(current.previous.get(&RedisUser::Admin).cloned());
    for member in &members {
        let mut conn = None;
        let mut last_error = String::new();
        for password in &admin_passwords {
            let access = Access {
                credentials: Some((RedisUser::Admin.name().to_owned(), password.clone())),
                ..access.clone()
            };
            match node::connect(member, &access).await {
                Ok(c) => {
                    conn = Some(c);
                    break;
                }
                Err(e) => last_error = e.to_string(),
            }
        }
        let mut conn = conn.ok_or_else(|| {
            format!(
                "Redis pod {} ({}) refused every admin password: {last_error}",
                member.ordinal, member.ip
            )
        })?;
        for user in RedisUser::ROTATED {
            let mut cmd = ::redis::cmd("ACL");
            cmd.arg("SETUSER").arg(user.name()).arg("resetpass");
            for password in target.accepted(user) {
                cmd.arg(format!("#{}", password_hash(password)));
            }
            cmd.query_async::<()>(&mut conn).await.map_err(|e| {
                format!(
                    "Redis pod {} ({}) refused ACL SETUSER {}: {e}",
                    member.ordinal,
                    member.ip,
                    user.name()
                )
            })?;
        }
        // A replica authenticates to its master with this when its link is next made.
        let mut cmd = ::redis::cmd("CONFIG");
        cmd.arg("SET").arg("masterauth").arg(&target.replication);
        cmd.query_async::<()>(&mut conn).await.map_err(|e| {
            format!(
                "Redis pod {} ({}) refused CONFIG SET masterauth: {e}",
                member.ordinal, member.ip
            )
        })?;
    }
    Ok(())
}

/// Every Redis pod that has an IP.
async fn redis_members(
    client: &Client,
    ss: &SessionService,
    namespace: &str,
) -> Result<Vec<Member>, String> {
    let names = Names::of(ss);
    let list = pods(client, namespace, &selector_query(ss, "redis"), "Redis").await?;
    let prefix = format!("{}-", names.redis());
    let port = u16::try_from(redis::PORT).unwrap_or(6379);
    let members: Vec<Member> = list
        .iter()
        .filter_map(|pod| {
            let ordinal = pod.name_any().strip_prefix(&prefix)?.parse().ok()?;
            let ip = pod.status.as_ref()?.pod_ip.clone()?;
            Some(Member {
                ordinal,
                ip,
                port,
                host: Some(names.redis_pod_host(ordinal)),
                outdated: false,
            })
        })
        .collect();
    // A pod without an address yet reads the ACL file, which holds both passwords, when it
    // starts.
    Ok(members)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::server::session_env;

    fn injected_pod(env: Vec<k8s_openapi::api::core::v1::EnvVar>) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "app-0"},
            "spec": {"containers": [
                {"name": "app", "env": [{"name": REDIS_URL_FILE_ENV, "value": "not the sidecar"}]},
                {"name": crate::inject::CONTAINER, "env": env},
            ]},
        }))
        .unwrap()
    }

    #[test]
    fn only_sidecars_injected_with_the_url_file_count_as_rereading_it() {
        let example = include_str!("../../../examples/sessionservice-standalone.yaml");
        let ss = crate::render::parse(example, "shop").unwrap().remove(0);
        assert!(rereads_redis_url(&injected_pod(session_env(
            &ss,
            RedisUser::Sidecar
        ))));
        // As an older release injected it: the URL from the Secret, read once at start.
        assert!(!rereads_redis_url(&injected_pod(session_env(
            &ss,
            RedisUser::Server
        ))));
    }
}
