//! A real Prometheus for the tests, scraping real processes on loopback, and a sidecar in
//! process for it to scrape.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::{Value, json};

use super::free_port;

/// One HTTP/1.0 request on loopback (no chunked answers); the status and the body (status 0:
/// nothing listens).
pub fn http(port: u16, method: &str, path: &str, body: Option<Value>) -> (u16, String) {
    http_as(None, port, method, path, body)
}

/// [`http`] with a bearer token.
pub fn http_as(
    token: Option<&str>,
    port: u16,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, String) {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return (0, String::new());
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let auth = token
        .map(|t| format!("authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nhost: localhost\r\n{auth}content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let status = answer[9..12].parse().unwrap();
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// A Prometheus server scraping `targets` every second and evaluating `groups` (rule groups)
/// every second; killed when dropped.
pub struct Prometheus {
    pub port: u16,
    child: Child,
}

impl Prometheus {
    pub fn start(dir: &Path, groups: &Value, targets: &[u16]) -> Self {
        std::fs::write(
            dir.join("rules.yaml"),
            serde_json::to_string(&json!({ "groups": groups })).unwrap(),
        )
        .unwrap();
        let targets: Vec<String> = targets.iter().map(|p| format!("'127.0.0.1:{p}'")).collect();
        std::fs::write(
            dir.join("prometheus.yml"),
            format!(
                "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nrule_files: [rules.yaml]\nscrape_configs:\n  - job_name: sessions\n    static_configs: [{{targets: [{}]}}]\n",
                targets.join(", ")
            ),
        )
        .unwrap();
        let port = free_port();
        let child = Command::new("prometheus")
            .current_dir(dir)
            .args([
                "--config.file=prometheus.yml",
                "--storage.tsdb.path=data",
                &format!("--web.listen-address=127.0.0.1:{port}"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (tests/run.sh installs Debian's prometheus)");
        Self { port, child }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// An instant query's result vector, or Prometheus's error in words.
    pub fn query(&self, query: &str) -> Result<Vec<Value>, String> {
        let (status, body) = http(
            self.port,
            "GET",
            &format!("/api/v1/query?query={}", encode(query)),
            None,
        );
        let answer: Value =
            serde_json::from_str(&body).map_err(|_| format!("HTTP {status}: {body}"))?;
        if answer["status"] != "success" {
            return Err(answer["error"].as_str().unwrap_or(&body).to_owned());
        }
        Ok(answer["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// The result vector of an instant query, polled until `done` accepts it (45 s at most).
    pub fn query_until(&self, query: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(45);
        loop {
            let answer = self.query(query);
            if let Ok(result) = &answer
                && done(result)
            {
                return result.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no answer to {query} in time: {answer:?}"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Percent-encodes a query for a URL.
pub fn encode(query: &str) -> String {
    query
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b':' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A sidecar in this process, as injected: API on loopback, probes and metrics on the admin
/// port; `extra` adds flags (a Redis URL). Returns once it listens.
pub struct Sidecar {
    pub api: u16,
    pub admin: u16,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Sidecar {
    pub async fn start(service: &str, extra: &[&str]) -> Self {
        let (api, admin) = (free_port(), free_port());
        let (listen, admin_listen) = (format!("127.0.0.1:{api}"), format!("127.0.0.1:{admin}"));
        let mut args = vec![
            "session-sidecar",
            "--listen",
            &listen,
            "--admin-listen",
            &admin_listen,
            "--service-name",
            service,
            "--log-format",
            "text",
        ];
        args.extend_from_slice(extra);
        let config = session_sidecar::config::Config::try_parse_from(args).unwrap();
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(session_sidecar::run(config, stopped));
        let listening = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", api)).is_err() {
            assert!(Instant::now() < listening, "the sidecar did not listen");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Self {
            api,
            admin,
            stop,
            task,
        }
    }

    pub async fn stop(self) {
        self.stop.send(true).unwrap();
        self.task.await.unwrap().unwrap();
    }
}
