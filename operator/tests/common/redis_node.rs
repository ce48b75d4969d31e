//! Real `redis-server` processes started exactly as the rendered StatefulSet starts them, with
//! only the addressing changed: each node on its own loopback address (127.0.0.0/8 is all
//! loopback on Linux), as each pod has its own IP, and all on one free port instead of 6379.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The decoded value of `key` in the rendered Secret whose name ends with `suffix`.
pub fn secret_value(objects: &[Value], suffix: &str, key: &str) -> String {
    let secret = objects
        .iter()
        .find(|o| {
            o["kind"] == "Secret" && o["metadata"]["name"].as_str().unwrap().ends_with(suffix)
        })
        .unwrap_or_else(|| panic!("no Secret *{suffix}"));
    let data = data_encoding::BASE64
        .decode(secret["data"][key].as_str().unwrap().as_bytes())
        .unwrap();
    String::from_utf8(data).unwrap()
}

/// One Redis pod: its data directory outlives the process, as a PVC outlives the pod.
pub struct RedisNode {
    child: Option<Child>,
    objects: Vec<Value>,
    pub dir: PathBuf,
    pub ip: String,
    pub port: u16,
    pub pod: String,
    /// Runs an older pod template than the StatefulSet's (a rolling update is pending).
    pub outdated: bool,
}

impl RedisNode {
    /// Starts pod `pod` (its `POD_NAME`) on `ip`.
    pub fn start(objects: &[Value], dir: &Path, ip: &str, port: u16, pod: &str) -> Self {
        let mut node = Self {
            child: None,
            objects: objects.to_vec(),
            dir: dir.to_owned(),
            ip: ip.to_owned(),
            port,
            pod: pod.to_owned(),
            outdated: false,
        };
        node.spawn();
        node
    }

    fn spawn(&mut self) {
        let dir = self.dir.display().to_string();
        let conf = self
            .objects
            .iter()
            .find(|o| o["kind"] == "ConfigMap")
            .unwrap()["data"]["redis.conf"]
            .as_str()
            .unwrap()
            .replace("dir /data", &format!("dir {dir}"))
            .replace(" /tls/", &format!(" {dir}/"))
            .replace(" /etc/redis-users/", &format!(" {dir}/"))
            .replace("6379", &self.port.to_string());
        let conf_path = self.dir.join("redis.conf");
        std::fs::write(&conf_path, conf).unwrap();
        // The ACL Secret's files, as its volume mounts them.
        for key in ["users.acl", "replication-password"] {
            std::fs::write(
                self.dir.join(key),
                secret_value(&self.objects, "-redis-acl", key),
            )
            .unwrap();
        }
        let container = &self
            .objects
            .iter()
            .find(|o| o["kind"] == "StatefulSet")
            .unwrap()["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(container["command"][0], "redis-server");
        let args: Vec<String> = container["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                a.as_str()
                    .unwrap()
                    .replace("/etc/redis/redis.conf", conf_path.to_str().unwrap())
                    .replace("$(REDIS_REPLICATION_PASSWORD)", super::REPLICATION_PASSWORD)
                    .replace("$(POD_NAME)", &self.pod)
            })
            .collect();
        let mut child = Command::new("redis-server")
            .args(&args)
            .args(["--bind", &self.ip])
            // Distinct loopback addresses share one interface, so a node must say which is its
            // own; in Kubernetes every pod has its own address.
            .args(["--cluster-announce-ip", &self.ip])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (tests/run.sh installs it)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect((self.ip.as_str(), self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server refused the rendered configuration"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // Whatever answered must be this node, not another server already on the port.
        assert!(
            child.try_wait().unwrap().is_none(),
            "redis-server exited: {}:{} was taken by another process",
            self.ip,
            self.port
        );
        self.child = Some(child);
    }

    /// Stops the node as Kubernetes stops a pod: SIGTERM, then wait for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().unwrap().is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Starts the stopped node again on `ip`, with the same data directory.
    pub fn start_on(&mut self, ip: &str) {
        assert!(self.child.is_none(), "stop the node first");
        ip.clone_into(&mut self.ip);
        self.spawn();
    }

    pub fn running(&self) -> bool {
        self.child.is_some()
    }
}

impl Drop for RedisNode {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
