//! Shared by the test binaries: real servers on free loopback ports.
#![allow(dead_code)] // shared by several test binaries; each uses a part

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free loopback port (bound and released; good enough for tests started one by one).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

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

/// A `redis-server` on a free loopback port, stopped when dropped.
pub struct RedisServer {
    child: Child,
    pub port: u16,
    pub url: String,
}

impl RedisServer {
    pub fn start() -> Self {
        let port = free_port();
        Self {
            child: spawn_redis(port, &[]),
            port,
            url: format!("redis://127.0.0.1:{port}"),
        }
    }

    /// Kills the server (as a crash would).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the server again on the same port (empty: no persistence in tests).
    pub fn restart(&mut self) {
        self.kill();
        self.child = spawn_redis(self.port, &[]);
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
