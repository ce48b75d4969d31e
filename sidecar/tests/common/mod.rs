//! Shared by the test binaries: real servers on free loopback ports.
#![allow(dead_code)] // shared by several test binaries; each uses a part

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use session_sidecar::contract::Keys;
use session_sidecar::contract::acl::{ADMIN_USER, Passwords, REPLICATION_USER, Role, acl_file};

#[path = "../../../tests/support/test_certs.rs"]
mod test_certs;
use test_certs::make_test_certs;

/// Script calls (`EVAL`, `EVALSHA` and their read-only forms) in an `INFO commandstats` reply.
pub fn script_calls(info: &str) -> u64 {
    info.lines()
        .filter(|l| {
            ["eval", "evalsha", "eval_ro", "evalsha_ro"]
                .iter()
                .any(|c| l.starts_with(&format!("cmdstat_{c}:")))
        })
        .filter_map(|l| {
            l.split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

pub use session_sidecar::testing::{free_cluster_port, free_port};

/// Waits until something accepts connections on the loopback port.
pub fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not start on port {port}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The key prefix the test servers' users are limited to (the behaviour suite's).
pub const TEST_PREFIX: &str = "t";

/// The password of a test server's user.
pub fn password(user: &str) -> String {
    format!("{user}-test-password")
}

/// Writes the ACL file the operator would render for keys under `prefix` into `dir`, with the
/// test passwords, and returns the `redis-server` arguments that load it: every test server
/// runs with the `default` user off and one user per role.
pub fn acl_args(dir: &Path, prefix: &str) -> Vec<String> {
    let [admin, server, sidecar, replication] = [
        ADMIN_USER,
        Role::Server.user(),
        Role::Sidecar.user(),
        REPLICATION_USER,
    ]
    .map(password);
    let file = acl_file(
        &Keys::new(prefix),
        &Passwords {
            admin: &[&admin],
            server: &[&server],
            sidecar: &[&sidecar],
            replication: &[&replication],
        },
    );
    let path = dir.join(format!("users-{}.acl", uuid::Uuid::new_v4()));
    std::fs::write(&path, file).unwrap();
    vec![
        "--aclfile".to_owned(),
        path.to_string_lossy().into_owned(),
        "--masteruser".to_owned(),
        REPLICATION_USER.to_owned(),
        "--masterauth".to_owned(),
        password(REPLICATION_USER),
    ]
}

/// `redis://user:password@address` for each comma-separated `host:port`.
pub fn url_as(user: &str, scheme: &str, addresses: &str) -> String {
    addresses
        .split(',')
        .map(|a| format!("{scheme}://{user}:{}@{a}", password(user)))
        .collect::<Vec<_>>()
        .join(",")
}

/// `redis-cli` as the admin user (the `default` user is off).
pub fn redis_cli() -> Command {
    let mut command = Command::new("redis-cli");
    command
        .args(["--user", ADMIN_USER])
        .env("REDISCLI_AUTH", password(ADMIN_USER));
    command
}

/// A `redis-server` on a free loopback port, stopped when dropped.
pub struct RedisServer {
    child: Child,
    pub port: u16,
    /// The URL as the sidecar user (what an injected sidecar gets).
    pub url: String,
    /// `host:port` and the scheme, for the URLs of the other users.
    address: String,
    scheme: &'static str,
    /// Extra arguments, kept for restarts.
    args: Vec<String>,
}

impl RedisServer {
    pub fn start() -> Self {
        Self::start_with(Vec::new())
    }

    /// A server whose users are limited to keys under `prefix`.
    pub fn start_for(prefix: &str) -> Self {
        Self::start_with_prefix(prefix, Vec::new())
    }

    /// The URL as `role`'s user.
    pub fn url_as(&self, role: Role) -> String {
        url_as(role.user(), self.scheme, &self.address)
    }

    /// The URL as the admin user.
    pub fn admin_url(&self) -> String {
        url_as(ADMIN_USER, self.scheme, &self.address)
    }

    /// `redis-cli` on this server as the admin user.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = redis_cli()
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A server with AOF on, `appendfsync always`, in a directory of its own (kept across
    /// restarts): every acknowledged write is on disk.
    pub fn start_durable() -> Self {
        let dir = std::env::temp_dir().join(format!("session-aof-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let dir = dir.to_string_lossy().into_owned();
        Self::start_with(vec![
            "--appendonly".into(),
            "yes".into(),
            "--appendfsync".into(),
            "always".into(),
            "--dir".into(),
            dir,
        ])
    }

    /// A replica of `master`; returns once its first sync is done.
    pub fn start_replica_of(master: &RedisServer) -> Self {
        let server = Self::start_with(vec![
            "--replicaof".into(),
            "127.0.0.1".into(),
            master.port.to_string(),
        ]);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if server
                .cli(&["info", "replication"])
                .contains("master_link_status:up")
            {
                return server;
            }
            assert!(Instant::now() < deadline, "the replica did not sync");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn start_with(args: Vec<String>) -> Self {
        Self::start_with_prefix(TEST_PREFIX, args)
    }

    fn start_with_prefix(prefix: &str, mut args: Vec<String>) -> Self {
        args.extend(acl_args(&std::env::temp_dir(), prefix));
        let port = free_port();
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let address = format!("127.0.0.1:{port}");
        Self {
            child: spawn_redis(port, &refs),
            port,
            url: url_as(Role::Sidecar.user(), "redis", &address),
            address,
            scheme: "redis",
            args,
        }
    }

    /// A server that speaks TLS only, with a certificate for `localhost` issued by a CA made
    /// for the test (openssl). Returns the server and the CA file clients must trust.
    pub fn start_tls(prefix: &str) -> (Self, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("session-tls-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        make_test_certs(&dir);
        let port = free_port();
        let file = |name: &str| dir.join(name).to_string_lossy().into_owned();
        let mut args = vec![
            "--port".to_owned(),
            "0".to_owned(),
            "--tls-port".to_owned(),
            port.to_string(),
            "--tls-cert-file".to_owned(),
            file("tls.crt"),
            "--tls-key-file".to_owned(),
            file("tls.key"),
            "--tls-ca-cert-file".to_owned(),
            file("ca.crt"),
            "--tls-auth-clients".to_owned(),
            "no".to_owned(),
        ];
        args.extend(acl_args(&dir, prefix));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let address = format!("localhost:{port}");
        let server = Self {
            child: spawn_redis(port, &refs),
            port,
            url: url_as(Role::Sidecar.user(), "rediss", &address),
            address,
            scheme: "rediss",
            args,
        };
        (server, dir.join("ca.crt"))
    }

    /// Kills the server (as a crash would).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the server again on the same port, with the same settings (and so, for a
    /// durable server, the same data).
    pub fn restart(&mut self) {
        self.kill();
        let refs: Vec<&str> = self.args.iter().map(String::as_str).collect();
        self.child = spawn_redis(self.port, &refs);
    }
}

/// Starts `redis-server` on `port` with `extra` arguments and waits until it accepts.
pub fn spawn_redis(port: u16, extra: &[&str]) -> Child {
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .args(["--dir", &std::env::temp_dir().to_string_lossy()])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server not found: run tests/run.sh, which installs it");
    wait_for_port(port, "redis-server");
    child
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Redis Cluster of three masters with one replica each, on free loopback ports.
pub struct RedisCluster {
    nodes: Vec<(u16, Option<Child>)>,
    dir: std::path::PathBuf,
    /// Comma-separated seed URLs (every node), as the sidecar user.
    pub url: String,
    /// Comma-separated `host:port` of every node.
    pub addresses: String,
}

impl RedisCluster {
    /// Starts six nodes and forms the cluster (about two seconds). Tries three times on fresh
    /// ports: a port picked free can be taken by another test before its node binds it.
    pub fn start() -> Self {
        let mut failures = Vec::new();
        for _ in 0..3 {
            match Self::try_start() {
                Ok(cluster) => {
                    cluster.wait_until_ok();
                    return cluster;
                }
                Err(why) => failures.push(why),
            }
        }
        panic!(
            "the test cluster could not be formed: {}",
            failures.join(" | ")
        );
    }

    /// Six nodes on distinct free ports, joined by `redis-cli --cluster create`; its output
    /// when that fails (the nodes are stopped by `Drop`).
    fn try_start() -> Result<Self, String> {
        let dir = std::env::temp_dir().join(format!("session-cluster-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut ports: Vec<u16> = Vec::new();
        while ports.len() < 6 {
            let port = free_cluster_port();
            if !ports.contains(&port) {
                ports.push(port);
            }
        }
        let acl = acl_args(&dir, TEST_PREFIX);
        let nodes = ports
            .iter()
            .map(|&port| {
                let conf = dir.join(format!("nodes-{port}.conf"));
                let mut args: Vec<&str> = acl.iter().map(String::as_str).collect();
                let conf = conf.to_string_lossy();
                let data = dir.to_string_lossy();
                args.extend([
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    &conf,
                    "--cluster-node-timeout",
                    "2000",
                    "--dir",
                    &data,
                    "--repl-diskless-sync-delay",
                    "0",
                ]);
                let child = spawn_redis(port, &args);
                (port, Some(child))
            })
            .collect();
        let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let addresses = addrs.join(",");
        let cluster = Self {
            nodes,
            dir,
            url: url_as(Role::Sidecar.user(), "redis", &addresses),
            addresses,
        };
        let out = redis_cli()
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("redis-cli not found: run tests/run.sh, which installs it");
        if !out.status.success() {
            let text = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
            let last: Vec<&str> = text.lines().rev().take(3).collect();
            return Err(format!(
                "redis-cli --cluster create failed: {}",
                last.join(" / ")
            ));
        }
        Ok(cluster)
    }

    /// The seed URLs as `role`'s user.
    pub fn url_as(&self, role: Role) -> String {
        url_as(role.user(), "redis", &self.addresses)
    }

    /// The ports of the nodes that are running.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|(_, child)| child.is_some())
            .map(|(port, _)| *port)
            .collect()
    }

    /// Script calls served by all nodes so far (see [`script_calls`]).
    pub fn script_calls(&self) -> u64 {
        self.ports()
            .into_iter()
            .filter_map(|port| Self::cli(port, &["info", "commandstats"]))
            .map(|info| script_calls(&info))
            .sum()
    }

    fn cli(port: u16, args: &[&str]) -> Option<String> {
        let out = redis_cli()
            .args(["-p", &port.to_string()])
            .args(args)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Waits until every live node reports `cluster_state:ok` and agrees on three masters, and
    /// every replica has finished its first sync (a replica that never synced cannot take over).
    /// Allows 60 s: with the whole suite running on two cores, six nodes with a 2 s node
    /// timeout can flap (a node marked failing, a failover) before they settle.
    pub fn wait_until_ok(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let unhealthy: Vec<String> = self
                .live_ports()
                .iter()
                .filter_map(|&p| Self::node_problem(p).map(|problem| format!("{p}: {problem}")))
                .collect();
            if unhealthy.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the cluster did not become healthy within 60 s: {}",
                unhealthy.join("; ")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// What keeps the node on `port` from counting as healthy, if anything.
    fn node_problem(port: u16) -> Option<String> {
        let info = Self::cli(port, &["cluster", "info"]).unwrap_or_default();
        if !info.contains("cluster_state:ok") {
            return Some("cluster_state is not ok".to_owned());
        }
        let nodes = Self::cli(port, &["cluster", "nodes"]).unwrap_or_default();
        let masters = nodes
            .lines()
            .filter(|l| l.contains("master") && !l.contains("fail"))
            .count();
        if masters != 3 {
            return Some(format!("sees {masters} healthy masters, not 3"));
        }
        let replication = Self::cli(port, &["info", "replication"]).unwrap_or_default();
        if !(replication.contains("role:master") || replication.contains("master_link_status:up")) {
            return Some("a replica whose link to its master is not up".to_owned());
        }
        None
    }

    fn live_ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|(_, c)| c.is_some())
            .map(|(p, _)| *p)
            .collect()
    }

    /// The port of the master serving `key`.
    pub fn master_of(&self, key: &str) -> u16 {
        let port = self.live_ports()[0];
        let slot: u16 = Self::cli(port, &["cluster", "keyslot", key])
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let nodes = Self::cli(port, &["cluster", "nodes"]).unwrap();
        for line in nodes
            .lines()
            .filter(|l| l.contains("master") && !l.contains("fail"))
        {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let node_port: u16 = fields[1].split(['@', ':']).nth(1).unwrap().parse().unwrap();
            for range in &fields[8..] {
                let (a, b) = range.split_once('-').unwrap_or((range, range));
                if (a.parse().unwrap()..=b.parse().unwrap()).contains(&slot) {
                    return node_port;
                }
            }
        }
        panic!("no master serves slot {slot}");
    }

    /// Waits until the replica of `master` holds every write made so far to the slot of
    /// `key`: a probe write in that slot, then `WAIT 1` on the same connection (replication
    /// is one ordered stream, so the probe's acknowledgement covers the writes before it).
    pub fn wait_replicated(&self, master: u16, key: &str) {
        let client =
            redis::Client::open(url_as(ADMIN_USER, "redis", &format!("127.0.0.1:{master}")))
                .unwrap();
        let mut conn = client.get_connection().unwrap();
        let _: () = redis::cmd("SET")
            .arg(format!("{key}:replication-probe"))
            .arg(1)
            .query(&mut conn)
            .unwrap();
        let acked: i64 = redis::cmd("WAIT")
            .arg(1)
            .arg(10_000)
            .query(&mut conn)
            .unwrap();
        assert_eq!(
            acked, 1,
            "the replica of {master} did not acknowledge in 10 s"
        );
    }

    /// Kills the node on `port`, as a crash would.
    pub fn kill(&mut self, port: u16) {
        for (p, child) in &mut self.nodes {
            if *p == port
                && let Some(mut c) = child.take()
            {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for (_, child) in &mut self.nodes {
            if let Some(mut c) = child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
