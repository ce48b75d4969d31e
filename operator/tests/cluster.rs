//! Redis Cluster day 2 on real `redis-server` nodes started from the rendered configuration:
//! bootstrap, a full restart with new IPs, a partial restart, a replica back before its master,
//! scale out and in — each healed or carried out by the operator's cluster manager alone, with
//! every key kept and the data slots balanced.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::redis_node::{RedisNode, free_port};
use serde_json::Value;
use session_operator::cluster::placement::{data_slots, key_slot};
use session_operator::cluster::topology::{NodeLine, parse_nodes};
use session_operator::cluster::{Access, Member, Phase, Report, Shape, converge, converge_once};

const PASSWORD: &str = "test-redis-password";
const SHARDS: u32 = 16;

/// Nodes of one test, on addresses `127.<subnet>.<generation>.<ordinal + 1>`.
struct Cluster {
    nodes: Vec<RedisNode>,
    dirs: Vec<tempfile::TempDir>,
    objects: Vec<Value>,
    port: u16,
    subnet: u8,
}

fn rendered_cluster() -> Vec<Value> {
    let mut ss = common::example("sessionservice-cluster.yaml");
    ss.spec.redis.tls.enabled = false;
    ss.spec.redis.tls.secret_name = None;
    ss.spec.sessions.shard_count = i32::try_from(SHARDS).unwrap();
    session_operator::render::objects(&ss, &common::test_secrets()).unwrap()
}

impl Cluster {
    fn start(subnet: u8, count: usize) -> Self {
        let mut cluster = Self {
            nodes: Vec::new(),
            dirs: Vec::new(),
            objects: rendered_cluster(),
            port: free_port(),
            subnet,
        };
        cluster.add(count);
        cluster
    }

    fn ip(&self, ordinal: usize, generation: u8) -> String {
        format!("127.{}.{generation}.{}", self.subnet, ordinal + 1)
    }

    /// Starts `count` more pods (the StatefulSet scaled up).
    fn add(&mut self, count: usize) {
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
    }

    fn members(&self) -> Vec<Member> {
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

    fn absent(&self) -> Vec<(i32, String)> {
        self.nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| !n.running())
            .map(|(i, _)| (i32::try_from(i).unwrap(), "pod not running".to_owned()))
            .collect()
    }

    fn conn(&self, ordinal: usize) -> redis::Connection {
        let n = &self.nodes[ordinal];
        redis::Client::open(format!("redis://:{PASSWORD}@{}:{}", n.ip, n.port))
            .unwrap()
            .get_connection()
            .unwrap()
    }

    fn view(&self, ordinal: usize) -> Vec<NodeLine> {
        let text: String = redis::cmd("CLUSTER")
            .arg("NODES")
            .query(&mut self.conn(ordinal))
            .unwrap();
        parse_nodes(&text).unwrap()
    }

    fn id(&self, ordinal: usize) -> String {
        self.view(ordinal)
            .into_iter()
            .find(|n| n.myself)
            .unwrap()
            .id
    }

    /// The ordinal of the master owning each slot, as node `observer` sees it.
    fn owners(&self, observer: usize) -> BTreeMap<u16, String> {
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

    fn ordinal_of(&self, id: &str) -> usize {
        (0..self.nodes.len())
            .find(|&i| self.nodes[i].running() && self.id(i) == id)
            .unwrap()
    }

    /// Writes `count` session-like keys spread over every shard, each to its slot's master.
    fn write(&self, count: usize) -> Vec<String> {
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
    fn assert_present(&self, keys: &[String]) {
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
    fn balance(&self, observer: usize) -> Vec<usize> {
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

    fn assert_balanced(&self, masters: usize, step: &str) {
        let balance = self.balance(0);
        let most = data_slots(SHARDS).len().div_ceil(masters);
        println!("data slots per master after {step}: {balance:?} (at most {most})");
        assert_eq!(balance.len(), masters, "{step}: masters");
        assert!(balance.iter().all(|&c| c <= most), "{step}: {balance:?}");
    }
}

fn access() -> Access {
    Access {
        password: Some(PASSWORD.to_owned()),
        tls_ca: None,
    }
}

fn shape(masters: usize, replicas: usize) -> Shape {
    Shape {
        masters,
        replicas,
        data_slots: data_slots(SHARDS),
    }
}

async fn heal(cluster: &Cluster, shape: &Shape, what: &str) -> Report {
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
fn ready(cluster: &Cluster, ordinal: usize) -> bool {
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
    let script = command[2].replace(
        "redis-cli",
        &format!("redis-cli -h {} -p {}", node.ip, node.port),
    );
    std::process::Command::new(&command[0])
        .args([&command[1], &script])
        .env("REDISCLI_AUTH", PASSWORD)
        .output()
        .unwrap()
        .status
        .success()
}

fn assert_cluster_ok(cluster: &Cluster, ordinals: std::ops::Range<usize>) {
    for i in ordinals {
        let info: String = redis::cmd("CLUSTER")
            .arg("INFO")
            .query(&mut cluster.conn(i))
            .unwrap();
        assert!(info.contains("cluster_state:ok"), "pod {i}: {info}");
        assert!(ready(cluster, i), "pod {i} passes its readiness probe");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_balances_data_slots_and_a_second_pass_changes_nothing() {
    let cluster = Cluster::start(11, 6);
    assert!(!ready(&cluster, 0), "a node outside a cluster is not ready");
    heal(
        &cluster,
        &shape(3, 1),
        "bootstrap of 3 masters + 3 replicas",
    )
    .await;
    assert_cluster_ok(&cluster, 0..6);
    cluster.assert_balanced(3, "bootstrap");
    let replicas = cluster.view(0).iter().filter(|n| n.is_replica()).count();
    assert_eq!(replicas, 3);
    let again = converge_once(&cluster.members(), &[], &access(), &shape(3, 1)).await;
    assert_eq!(again.plan.phase, Phase::Ready);
    assert!(again.plan.actions.is_empty(), "{:?}", again.plan.actions);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_restart_with_new_ips_heals_with_the_same_ids_slots_and_data() {
    let mut cluster = Cluster::start(12, 6);
    let shape = shape(3, 1);
    heal(&cluster, &shape, "bootstrap").await;
    let keys = cluster.write(400);
    let ids: Vec<String> = (0..6).map(|i| cluster.id(i)).collect();
    let owners = cluster.owners(0);
    for node in &mut cluster.nodes {
        node.stop();
    }
    for i in 0..6 {
        let ip = cluster.ip(i, 1);
        cluster.nodes[i].start_on(&ip);
    }
    // The nodes alone do not find each other: their peers' addresses are all stale.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let info: String = redis::cmd("CLUSTER")
            .arg("INFO")
            .query(&mut cluster.conn(0))
            .unwrap();
        if info.contains("cluster_state:fail") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the restarted nodes should lose each other: {info}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    heal(&cluster, &shape, "full restart with new IPs").await;
    assert_cluster_ok(&cluster, 0..6);
    assert_eq!(
        (0..6).map(|i| cluster.id(i)).collect::<Vec<_>>(),
        ids,
        "same node ids"
    );
    assert_eq!(cluster.owners(3), owners, "same slot owners");
    cluster.assert_present(&keys);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_and_a_replica_restart_and_a_replica_returns_before_its_master() {
    let mut cluster = Cluster::start(13, 6);
    let shape = shape(3, 1);
    heal(&cluster, &shape, "bootstrap").await;
    let keys = cluster.write(300);

    // One master and one (other master's) replica at once.
    let view = cluster.view(0);
    let master = cluster.ordinal_of(
        &view
            .iter()
            .find(|n| n.master && n.slot_count() > 0)
            .unwrap()
            .id,
    );
    let replica = (0..6)
        .find(|&i| {
            let me = cluster.view(i).into_iter().find(|n| n.myself).unwrap();
            me.is_replica() && me.master_id.as_deref() != Some(cluster.id(master).as_str())
        })
        .unwrap();
    cluster.nodes[master].stop();
    cluster.nodes[replica].stop();
    let absent = cluster.absent();
    let report = converge_once(&cluster.members(), &absent, &access(), &shape).await;
    assert_eq!(
        report.plan.phase,
        Phase::Degraded,
        "{}",
        report.plan.message
    );
    for i in [master, replica] {
        let ip = cluster.ip(i, 1);
        cluster.nodes[i].start_on(&ip);
    }
    heal(
        &cluster,
        &shape,
        "master and replica restarted with new IPs",
    )
    .await;
    cluster.assert_present(&keys);

    // A master and its replica stop; the replica comes back first, on a new address.
    let view = cluster.view(0);
    let master = view
        .iter()
        .find(|n| n.master && n.slot_count() > 0)
        .unwrap()
        .id
        .clone();
    let replica = view
        .iter()
        .find(|n| n.master_id.as_deref() == Some(master.as_str()))
        .unwrap()
        .id
        .clone();
    let (master, replica) = (cluster.ordinal_of(&master), cluster.ordinal_of(&replica));
    cluster.nodes[master].stop();
    cluster.nodes[replica].stop();
    let ip = cluster.ip(replica, 2);
    cluster.nodes[replica].start_on(&ip);
    let absent = cluster.absent();
    for _ in 0..3 {
        let report = converge_once(&cluster.members(), &absent, &access(), &shape).await;
        assert_ne!(report.plan.phase, Phase::Ready);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let ip = cluster.ip(master, 2);
    cluster.nodes[master].start_on(&ip);
    heal(&cluster, &shape, "replica back before its master").await;
    assert_cluster_ok(&cluster, 0..6);
    cluster.assert_present(&keys);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaling_out_to_six_masters_and_in_to_four_moves_slots_live_and_keeps_every_key() {
    let mut cluster = Cluster::start(14, 6);
    heal(&cluster, &shape(3, 1), "bootstrap").await;
    cluster.assert_balanced(3, "bootstrap");
    let keys = cluster.write(600);

    cluster.add(6);
    let report = heal(&cluster, &shape(6, 1), "scale-out 3 -> 6 masters").await;
    assert_eq!(report.plan.hold_pods, 12);
    assert_cluster_ok(&cluster, 0..12);
    cluster.assert_balanced(6, "3 -> 6");
    cluster.assert_present(&keys);

    // Scale in to 4 masters (8 pods): pods 8..11 are drained and leave before the StatefulSet
    // may shrink.
    let four = shape(4, 1);
    // Not while a node that stays is down: the cluster must be whole to shrink safely.
    cluster.nodes[3].stop();
    let blocked = converge_once(&cluster.members(), &cluster.absent(), &access(), &four).await;
    assert_eq!(
        blocked.plan.phase,
        Phase::ScaleInBlocked,
        "{}",
        blocked.plan.message
    );
    assert!(blocked.plan.actions.is_empty());
    assert_eq!(
        blocked.plan.hold_pods, 12,
        "nothing may go before it is drained"
    );
    println!(
        "scale-in refused while pod 3 is down: {}",
        blocked.plan.message
    );
    let ip = cluster.ip(3, 0);
    cluster.nodes[3].start_on(&ip);
    let report = heal(&cluster, &four, "scale-in 6 -> 4 masters").await;
    assert_eq!(report.plan.hold_pods, 8, "{}", report.plan.message);
    for i in 8..12 {
        cluster.nodes[i].stop();
    }
    cluster.nodes.truncate(8);
    heal(&cluster, &four, "after the StatefulSet shrank").await;
    assert_cluster_ok(&cluster, 0..8);
    assert_eq!(cluster.view(0).len(), 8, "the removed nodes are forgotten");
    cluster.assert_balanced(4, "6 -> 4");
    cluster.assert_present(&keys);
}

/// Runs passes until the cluster is ready with every pod on the new template, restarting (on a
/// new IP) each pod the manager asks for, as the StatefulSet would recreate a deleted pod.
async fn roll(cluster: &mut Cluster, shape: &Shape, generation: u8) -> (usize, usize) {
    let (mut restarts, mut failovers) = (0, 0);
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let report = converge_once(&cluster.members(), &cluster.absent(), &access(), shape).await;
        failovers += report.failovers;
        if let Some(ordinal) = report.restart {
            let i = usize::try_from(ordinal).unwrap();
            cluster.nodes[i].stop();
            let ip = cluster.ip(i, generation);
            cluster.nodes[i].start_on(&ip);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_update_restarts_replicas_first_and_fails_masters_over_before_restarting_them() {
    let mut cluster = Cluster::start(15, 6);
    let shape = shape(3, 1);
    heal(&cluster, &shape, "bootstrap").await;
    let keys = cluster.write(300);
    let masters_before: Vec<String> = cluster
        .view(0)
        .into_iter()
        .filter(|n| n.master && n.slot_count() > 0)
        .map(|n| n.id)
        .collect();
    for node in &mut cluster.nodes {
        node.outdated = true;
    }
    let started = Instant::now();
    let (restarts, failovers) = roll(&mut cluster, &shape, 1).await;
    println!(
        "rolling update of 6 pods: {restarts} restarts, {failovers} failovers, {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(restarts, 6);
    assert_eq!(failovers, 3, "every master failed over before its restart");
    let view = cluster.view(0);
    for id in &masters_before {
        let node = view.iter().find(|n| &n.id == id).unwrap();
        assert!(node.is_replica(), "the old masters now replicate");
    }
    assert_cluster_ok(&cluster, 0..6);
    cluster.assert_present(&keys);
}
