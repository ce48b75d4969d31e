//! Least privilege in Redis: which commands and keys each client role needs, defined once.
//!
//! The operator writes these rules into the ACL file of the Redis it runs (one user per role,
//! the `default` user off), and every process checks at connect that its user holds the rules of
//! its role. So an external Redis whose user lacks a rule is reported by name, with the rule to
//! grant, instead of failing requests one by one.
//!
//! | user | may run | on keys |
//! |---|---|---|
//! | `sidecar` | the read and commit scripts' commands, client tracking, cluster topology | read and write `P:{<shard>}:*`; read `P:{o:*}:sessions` |
//! | `server` | the sidecar's, plus what the outbox relay, the consumer and dead letters need (`XRANGE`, `XDEL`) | every key under `P:` |
//! | `admin` | everything (the operator's bootstrap, repair and resharding) | every key |
//! | `replication` | `PSYNC`, `REPLCONF`, `PING` (replicas syncing from their master); `INFO`, `CLUSTER INFO`, `CLUSTER NODES` (the pods' readiness probes) | none |
//!
//! Everything else is refused for the two client users: `FLUSHALL`, `FLUSHDB`, `CONFIG`,
//! `KEYS`, `SCAN`, `DEBUG`, `SHUTDOWN`, `MODULE`, `ACL`, and any key outside the prefix.
//! Scripts run with their caller's rights, so the commands the Lua scripts call are granted one
//! by one too.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use sha2::{Digest, Sha256};

use super::Keys;

/// A client role of the session service, each with its own Redis user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The sidecar beside an application: its API's reads and writes.
    Sidecar,
    /// The session service: the API plus the background work.
    Server,
}

/// The user the operator uses for its own Redis work.
pub const ADMIN_USER: &str = "admin";
/// The user replicas sync with (`masteruser`), and the pods' probes ping with.
pub const REPLICATION_USER: &str = "replication";

impl Role {
    /// The Redis user name of this role.
    #[must_use]
    pub fn user(self) -> &'static str {
        match self {
            Role::Sidecar => "sidecar",
            Role::Server => "server",
        }
    }

    fn grants(self) -> impl Iterator<Item = &'static Grant> {
        GRANTS
            .iter()
            .filter(move |g| self == Role::Server || g.sidecar)
    }

    /// The ACL rules of this role for keys under `keys`' prefix, as `ACL SETUSER` and the ACL
    /// file take them (without the user's name, state and passwords).
    #[must_use]
    pub fn rules(self, keys: &Keys) -> String {
        let commands: BTreeSet<&str> = self.grants().map(|g| g.command).collect();
        let mut rules = "resetkeys resetchannels -@all".to_owned();
        for command in commands {
            let _ = write!(rules, " +{command}");
        }
        let prefix = glob_escape(keys.prefix());
        match self {
            Role::Sidecar => {
                let _ = write!(
                    rules,
                    " ~{prefix}:{{[0-9]*}}:* %R~{prefix}:{{o:*}}:sessions"
                );
            }
            Role::Server => {
                let _ = write!(rules, " ~{prefix}:*");
            }
        }
        rules
    }

    /// One example call per grant, with keys shaped as the code uses them: what
    /// [`redis.acl_check_cmd`](https://redis.io/docs/latest/develop/interact/programmability/lua-api/)
    /// checks at connect.
    fn examples(self, keys: &Keys) -> Vec<Vec<String>> {
        let shard = keys.session(0, "acl-check");
        let org = keys.org_sessions("acl-check");
        let events = keys.events();
        self.grants()
            .map(|g| {
                g.example
                    .iter()
                    .map(|part| match *part {
                        SHARD_KEY => shard.clone(),
                        ORG_KEY => org.clone(),
                        EVENTS_KEY => events.clone(),
                        other => other.to_owned(),
                    })
                    .collect()
            })
            .collect()
    }
}

/// One command a role runs, with an example call (placeholders for keys).
struct Grant {
    /// The ACL command name (`client|tracking` for a subcommand).
    command: &'static str,
    /// Whether the sidecar needs it too (the server always does).
    sidecar: bool,
    example: &'static [&'static str],
}

const SHARD_KEY: &str = "<shard key>";
const ORG_KEY: &str = "<org key>";
const EVENTS_KEY: &str = "<events key>";

const fn both(command: &'static str, example: &'static [&'static str]) -> Grant {
    Grant {
        command,
        sidecar: true,
        example,
    }
}

const fn server(command: &'static str, example: &'static [&'static str]) -> Grant {
    Grant {
        command,
        sidecar: false,
        example,
    }
}

/// Every command the session service sends, directly or from its scripts (`read.lua`,
/// `commit.lua`, `probe.lua`), and the client library's own (`ASKING` on a slot being moved,
/// `CLUSTER SLOTS` for the topology). Not `CLIENT SETINFO`: Redis before 7.2 does not know it
/// (an ACL file naming it would not load), and the client library ignores its refusal.
const GRANTS: &[Grant] = &[
    both("ping", &["ping"]),
    both("client|tracking", &["client", "tracking", "on"]),
    both("cluster|slots", &["cluster", "slots"]),
    both("asking", &["asking"]),
    both("wait", &["wait", "0", "0"]),
    both("eval", &["eval", "return 1", "1", SHARD_KEY]),
    both("evalsha", &["evalsha", "0000", "1", SHARD_KEY]),
    // The read script, read-only: so the sidecar may read org listings it may not write.
    both("eval_ro", &["eval_ro", "return 1", "1", ORG_KEY]),
    both("evalsha_ro", &["evalsha_ro", "0000", "1", ORG_KEY]),
    // read.lua, and commit.lua's guards
    both("get", &["get", SHARD_KEY]),
    both("hget", &["hget", SHARD_KEY, "f"]),
    both("hgetall", &["hgetall", SHARD_KEY]),
    both(
        "zrangebyscore",
        &["zrangebyscore", SHARD_KEY, "-inf", "+inf"],
    ),
    both(
        "zrevrangebyscore",
        &["zrevrangebyscore", ORG_KEY, "+inf", "-inf"],
    ),
    both("zscore", &["zscore", SHARD_KEY, "m"]),
    both("lrange", &["lrange", SHARD_KEY, "0", "-1"]),
    both("pttl", &["pttl", SHARD_KEY]),
    // commit.lua and probe.lua
    both("zcount", &["zcount", SHARD_KEY, "-inf", "+inf"]),
    both("set", &["set", SHARD_KEY, "v", "px", "1"]),
    both("del", &["del", SHARD_KEY]),
    both("incr", &["incr", SHARD_KEY]),
    both("pexpire", &["pexpire", SHARD_KEY, "1"]),
    both("hset", &["hset", SHARD_KEY, "f", "v"]),
    both("hdel", &["hdel", SHARD_KEY, "f"]),
    both("zadd", &["zadd", SHARD_KEY, "1", "m"]),
    both("zrem", &["zrem", SHARD_KEY, "m"]),
    both(
        "zremrangebyscore",
        &["zremrangebyscore", SHARD_KEY, "-inf", "1"],
    ),
    both("rpush", &["rpush", SHARD_KEY, "v"]),
    both("llen", &["llen", SHARD_KEY]),
    both("hincrby", &["hincrby", SHARD_KEY, "f", "1"]),
    both("xadd", &["xadd", SHARD_KEY, "*", "f", "v"]),
    both("xlen", &["xlen", SHARD_KEY]),
    // The outbox relay, the inbound consumer and dead letters (server only).
    server("xrange", &["xrange", EVENTS_KEY, "-", "+"]),
    server("xdel", &["xdel", SHARD_KEY, "1-0"]),
    server("xadd", &["xadd", EVENTS_KEY, "*", "f", "v"]),
    server("zadd", &["zadd", ORG_KEY, "1", "m"]),
];

/// Escapes the glob characters of a key prefix for an ACL key pattern.
fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The passwords of the four users, in plain text (the file holds only their SHA-256).
#[derive(Debug, Clone)]
pub struct Passwords<'a> {
    pub admin: &'a [&'a str],
    pub server: &'a [&'a str],
    pub sidecar: &'a [&'a str],
    pub replication: &'a [&'a str],
}

/// The Redis ACL file (`aclfile`) for keys under `keys`' prefix: the `default` user off and one
/// user per role. Each user may have several passwords (`>old >new` while one is rotated); the
/// file holds their SHA-256, never the passwords.
#[must_use]
pub fn acl_file(keys: &Keys, passwords: &Passwords<'_>) -> String {
    let hashes = |list: &[&str]| -> String {
        list.iter()
            .map(|p| format!(" #{}", password_hash(p)))
            .collect()
    };
    [
        // Off: nobody can authenticate as `default`, and connections must authenticate as
        // one of the users below. Its rights stay whole on purpose: Redis 7.0 replays the
        // AOF's MULTI/EXEC blocks (every script's effects) with the `default` user's rights, so
        // a `default` without rights loses every session on restart ("NOPERM ACLs rules
        // changed ... EXEC" in the log) — the durability test caught it.
        "user default off resetpass ~* &* +@all".to_owned(),
        format!(
            "user {ADMIN_USER} on{} ~* &* +@all",
            hashes(passwords.admin)
        ),
        format!(
            "user {REPLICATION_USER} on{} resetkeys resetchannels -@all +psync +replconf +ping +info +cluster|info +cluster|nodes",
            hashes(passwords.replication)
        ),
        format!(
            "user {} on{} {}",
            Role::Server.user(),
            hashes(passwords.server),
            Role::Server.rules(keys)
        ),
        format!(
            "user {} on{} {}",
            Role::Sidecar.user(),
            hashes(passwords.sidecar),
            Role::Sidecar.rules(keys)
        ),
    ]
    .join("\n")
        + "\n"
}

/// The SHA-256 of a password in hex, as an ACL rule names it after `#`.
#[must_use]
pub fn password_hash(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .fold(String::with_capacity(64), |mut out, b| {
            let _ = write!(out, "{b:02x}");
            out
        })
}

/// The check run at connect: one script that asks Redis, for every example call of the role,
/// whether this connection's user may run it.
pub(crate) const CHECK_SCRIPT: &str = include_str!("acl_check.lua");

/// The script's key (it routes the script in a cluster) and arguments for `role`.
pub(crate) fn check_call(role: Role, keys: &Keys) -> (String, Vec<String>) {
    let mut argv = Vec::new();
    for example in role.examples(keys) {
        argv.push(example.len().to_string());
        argv.extend(example);
    }
    (keys.session(0, "acl-check"), argv)
}

/// What a user missing rules is told: each refused call, and the rules of the role to grant.
pub(crate) fn missing_message(role: Role, keys: &Keys, missing: &[String]) -> String {
    format!(
        "the Redis user may not run what the {} role needs: {}. Grant it these ACL rules (for example `ACL SETUSER <user> {}`); until then this process reports not ready",
        role.user(),
        missing.join("; "),
        role.rules(keys)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sidecar_may_not_touch_the_events_stream_or_delete_from_streams() {
        let rules = Role::Sidecar.rules(&Keys::new("sess"));
        assert!(rules.starts_with("resetkeys resetchannels -@all "));
        assert!(rules.contains(" +evalsha ") && rules.contains(" +client|tracking "));
        assert!(!rules.contains("+xdel") && !rules.contains("+xrange"));
        assert!(rules.ends_with(" ~sess:{[0-9]*}:* %R~sess:{o:*}:sessions"));
        let server = Role::Server.rules(&Keys::new("sess"));
        assert!(server.contains(" +xdel ") && server.ends_with(" ~sess:*"));
        assert_eq!(server.matches("+xadd").count(), 1, "each command once");
    }

    #[test]
    fn glob_characters_of_the_prefix_are_escaped() {
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }

    #[test]
    fn the_file_holds_hashes_not_passwords() {
        let file = acl_file(
            &Keys::new("sess"),
            &Passwords {
                admin: &["admin-secret"],
                server: &["server-secret"],
                sidecar: &["old", "new"],
                replication: &["replication-secret"],
            },
        );
        assert!(!file.contains("secret") && !file.contains(">"));
        assert!(file.starts_with("user default off "));
        assert!(file.contains(&format!(
            "user sidecar on #{} #{} ",
            password_hash("old"),
            password_hash("new")
        )));
        assert_eq!(file.lines().count(), 5);
    }
}
