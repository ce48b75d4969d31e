//! A Redis Cluster of real `redis-server` nodes started from the rendered configuration, on
//! addresses the test controls (so "new IPs" after a restart are real), and the operator's
//! cluster manager run against it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::Value;
use session_operator::testing::cluster::{
    Access, Member, Phase, Report, Shape, converge, converge_once,
};
use session_operator::testing::cluster::{NodeLine, parse_nodes};
use session_operator::testing::cluster::{data_slots, key_slot};

use super::free_cluster_port;
use super::redis_node::RedisNode;

pub use super::ADMIN_PASSWORD as PASSWORD;
pub const SHARDS: u32 = 16;

/// Nodes of one test, on addresses `127.<subnet>.<generation>.<ordinal + 1>`.
pub struct Cluster {
    pub nodes: Vec<RedisNode>,
    dirs: Vec<tempfile::TempDir>,
    pub objects: Vec<Value>,
    pub port: u16,
    subnet: u8,
    /// A hosts file mapping each pod's DNS name to its current address, kept up to date (for
    /// clients that resolve the announced hostnames).
    pub hosts: Option<std::path::PathBuf>,
}

pub fn rendered_cluster() -> Vec<Value> {
    let mut ss = super::example("sessionservice-cluster.yaml");
    ss.spec.redis.tls.enabled = false;
    ss.spec.redis.tls.secret_name = None;
    ss.spec.sessions.shard_count = Some(i32::try_from(SHARDS).unwrap());
    session_operator::testing::render::objects(&ss, &super::test_secrets()).unwrap()
}

impl Cluster {
    pub fn start(subnet: u8, count: usize) -> Self {
        Self::start_on_port(subnet, count, free_cluster_port())
    }

    /// The same on a given port (6379 where the operator itself connects, as to a pod).
    pub fn start_on_port(subnet: u8, count: usize, port: u16) -> Self {
        let mut cluster = Self {
            nodes: Vec::new(),
            dirs: Vec::new(),
            objects: rendered_cluster(),
            port,
            subnet,
            hosts: None,
        };
        cluster.add(count);
        cluster
    }

    pub fn ip(&self, ordinal: usize, generation: u8) -> String {
        format!("127.{}.{generation}.{}", self.subnet, ordinal + 1)
    }

    /// Starts stopped pod `ordinal` again, on its address of `generation`.
    pub fn restart_on(&mut self, ordinal: usize, generation: u8) {
        let ip = self.ip(ordinal, generation);
        self.nodes[ordinal].start_on(&ip);
        self.write_hosts();
    }

    /// The DNS name a pod announces (`$(POD_NAME).<headless>.<namespace>.svc`).
    pub fn host(&self, ordinal: usize) -> String {
        format!("sessions-ha-redis-{ordinal}.sessions-ha-redis-headless.platform.svc")
    }

    /// Rewrites the hosts file in place (a bind mount of it sees the new content), without
    /// truncating it first: every line has the same width, so a lookup that reads the file
    /// while it is written sees whole lines, old or new, never an empty file.
    pub fn write_hosts(&self) {
        use std::io::{Seek, Write};
        let Some(path) = &self.hosts else { return };
        let mut text = format!("{:<15} localhost\n", "127.0.0.1");
        for (i, node) in self.nodes.iter().enumerate() {
            text.push_str(&format!("{:<15} {}\n", node.ip, self.host(i)));
        }
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(path)
            .unwrap();
        file.seek(std::io::SeekFrom::Start(0)).unwrap();
        file.write_all(text.as_bytes()).unwrap();
        file.set_len(u64::try_from(text.len()).unwrap()).unwrap();
    }

    /// Starts `count` more pods (the StatefulSet scaled up).
    pub fn add(&mut self, count: usize) {
        for _ in 0..count {
            let ordinal = self.nodes.len();
            let dir = tempfile::tempdir().unwrap();
            let ip = self.ip(ordinal, 0);
            let pod = format!("sessions-ha-redis-{ordinal}");
            self.nodes.push(RedisNode::start(
                &self.objects,
                dir.path(),
                &ip,
                self.port,
                &pod,
            ));
            self.dirs.push(dir);
        }
        self.write_hosts();
    }

    pub fn members(&self) -> Vec<Member> {
        self.nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.running())
            .map(|(i, n)| Member {
                ordinal: i32::try_from(i).unwrap(),
                ip: n.ip.clone(),
                port: n.port,
                host: None,
                outdated: n.outdated,
            })
            .collect()
    }

    pub fn absent(&self) -> Vec<(i32, String)> {
        self.nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| !n.running())
            .map(|(i, _)| (i32::try_from(i).unwrap(), "pod not running".to_owned()))
            .collect()
    }

    pub fn conn(&self, ordinal: usize) -> redis::Connection {
        let n = &self.nodes[ordinal];
        redis::Client::open(format!("redis://admin:{PASSWORD}@{}:{}", n.ip, n.port))
            .unwrap()
            .get_connection()
            .unwrap()
    }

    pub fn view(&self, ordinal: usize) -> Vec<NodeLine> {
        let text: String = redis::cmd("CLUSTER")
            .arg("NODES")
            .query(&mut self.conn(ordinal))
            .unwrap();
        parse_nodes(&text).unwrap()
    }

    pub fn id(&self, ordinal: usize) -> String {
        self.view(ordinal)
            .into_iter()
            .find(|n| n.myself)
            .unwrap()
            .id
    }

    /// The ordinal of the master owning each slot, as node `observer` sees it.
    pub fn owners(&self, observer: usize) -> BTreeMap<u16, String> {
        let mut owners = BTreeMap::new();
        for n in self.view(observer) {
            for &(a, b) in &n.slots {
                for s in a..=b {
                    owners.insert(s, n.id.clone());
                }
            }
        }
        owners
    }

    pub fn ordinal_of(&self, id: &str) -> usize {
        (0..self.nodes.len())
            .find(|&i| self.nodes[i].running() && self.id(i) == id)
            .unwrap()
    }

    /// Writes `count` session-like keys spread over every shard, each to its slot's master.
    pub fn write(&self, count: usize) -> Vec<String> {
        let owners = self.owners(0);
        let mut by_owner: BTreeMap<usize, Vec<String>> = BTreeMap::new();
        let keys: Vec<String> = (0..count)
            .map(|i| format!("sess:{{{}}}:s:test-{i}", u32::try_from(i).unwrap() % SHARDS))
            .collect();
        for key in &keys {
            let owner = self.ordinal_of(&owners[&key_slot(key)]);
            by_owner.entry(owner).or_default().push(key.clone());
        }
        for (owner, keys) in by_owner {
            let mut conn = self.conn(owner);
            for key in keys {
                let _: () = redis::cmd("SET")
                    .arg(&key)
                    .arg(&key)
                    .query(&mut conn)
                    .unwrap();
            }
        }
        keys
    }

    /// Every key is on its slot's current master.
    pub fn assert_present(&self, keys: &[String]) {
        let owners = self.owners(0);
        let mut missing = Vec::new();
        for key in keys {
            let owner = self.ordinal_of(&owners[&key_slot(key)]);
            let value: Option<String> = redis::cmd("GET")
                .arg(key)
                .query(&mut self.conn(owner))
                .unwrap();
            if value.as_deref() != Some(key.as_str()) {
                missing.push(key.clone());
            }
        }
        assert!(
            missing.is_empty(),
            "{} keys lost: {missing:?}",
            missing.len()
        );
    }

    /// Data slots per master, as node `observer` sees them.
    pub fn balance(&self, observer: usize) -> Vec<usize> {
        let data = data_slots(SHARDS);
        let mut per: BTreeMap<String, usize> = BTreeMap::new();
        for n in self
            .view(observer)
            .into_iter()
            .filter(|n| n.master && n.slot_count() > 0)
        {
            per.insert(n.id.clone(), data.iter().filter(|&&s| n.owns(s)).count());
        }
        per.into_values().collect()
    }

    pub fn assert_balanced(&self, masters: usize, step: &str) {
        let balance = self.balance(0);
        let most = data_slots(SHARDS).len().div_ceil(masters);
        println!("data slots per master after {step}: {balance:?} (at most {most})");
        assert_eq!(balance.len(), masters, "{step}: masters");
        assert!(balance.iter().all(|&c| c <= most), "{step}: {balance:?}");
    }
}

pub fn access() -> Access {
    Access {
        credentials: Some(("admin".to_owned(), PASSWORD.to_owned())),
        tls_ca: None,
    }
}

pub fn shape(masters: usize, replicas: usize) -> Shape {
    Shape {
        masters,
        replicas,
        data_slots: data_slots(SHARDS),
    }
}

pub async fn heal(cluster: &Cluster, shape: &Shape, what: &str) -> Report {
    let started = Instant::now();
    let report = converge(
        &cluster.members(),
        &access(),
        shape,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(
        report.plan.phase,
        Phase::Ready,
        "{what}: {} ({:?})",
        report.plan.message,
        report.error
    );
    println!(
        "{what}: ready in {:.1} s: {}",
        started.elapsed().as_secs_f64(),
        report.plan.message
    );
    report
}

/// Runs the rendered readiness probe against pod `ordinal`.
pub fn ready(cluster: &Cluster, ordinal: usize) -> bool {
    let container = &cluster
        .objects
        .iter()
        .find(|o| o["kind"] == "StatefulSet")
        .unwrap()["spec"]["template"]["spec"]["containers"][0];
    let command: Vec<String> = container["readinessProbe"]["exec"]["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect();
    let node = &cluster.nodes[ordinal];
    let script = command[2]
        .replace(
            "redis-cli",
            &format!("redis-cli -h {} -p {}", node.ip, node.port),
        )
        .replace("/etc/redis-users/", &format!("{}/", node.dir.display()));
    std::process::Command::new(&command[0])
        .args([&command[1], &script])
        .output()
        .unwrap()
        .status
        .success()
}

pub fn assert_cluster_ok(cluster: &Cluster, ordinals: std::ops::Range<usize>) {
    for i in ordinals {
        let info: String = redis::cmd("CLUSTER")
            .arg("INFO")
            .query(&mut cluster.conn(i))
            .unwrap();
        assert!(info.contains("cluster_state:ok"), "pod {i}: {info}");
        assert!(ready(cluster, i), "pod {i} passes its readiness probe");
    }
}

/// Runs passes until the cluster is ready with every pod on the new template, restarting (on a
/// new IP) each pod the manager asks for, as the StatefulSet would recreate a deleted pod.
pub async fn roll(cluster: &mut Cluster, shape: &Shape, generation: u8) -> (usize, usize) {
    let (mut restarts, mut failovers) = (0, 0);
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let report = converge_once(&cluster.members(), &cluster.absent(), &access(), shape).await;
        failovers += report.failovers;
        if let Some(ordinal) = report.restart {
            let i = usize::try_from(ordinal).unwrap();
            cluster.nodes[i].stop();
            cluster.restart_on(i, generation);
            cluster.nodes[i].outdated = false;
            restarts += 1;
        }
        let pending = cluster.nodes.iter().any(|n| n.outdated);
        if report.plan.phase == Phase::Ready && !pending {
            return (restarts, failovers);
        }
        assert!(
            Instant::now() < deadline,
            "rolling update stuck: {}",
            report.plan.message
        );
        if report.plan.actions.is_empty() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
