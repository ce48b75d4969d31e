//! End to end with a real Prometheus: it scrapes a running sidecar's admin port (as the
//! PodMonitor has it do), loads the operator's generated SLO rules, and evaluates them on the
//! sidecar's real series, selected by the `session_service` label.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::{Value, json};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One HTTP/1.0 request on loopback (no chunked answers); the status and the body (status 0:
/// nothing listens).
fn http(port: u16, method: &str, path: &str, body: Option<Value>) -> (u16, String) {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return (0, String::new());
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
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

struct Prometheus(Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The result vector of an instant query, polled until `done` accepts it.
fn query_until(port: u16, query: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let encoded: String = query
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b':' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(45);
    loop {
        let (status, body) = http(port, "GET", &format!("/api/v1/query?query={encoded}"), None);
        if status == 200 {
            let answer: Value = serde_json::from_str(&body).unwrap();
            let result = answer["data"]["result"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if done(&result) {
                return result;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no answer to {query} in time: {body}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_a_sidecar_and_evaluates_the_generated_slo_rules() {
    let ss = common::example("sessionservice-standalone.yaml");
    // The sidecar, as injected: API on loopback, probes and metrics on the admin port.
    let (api, admin) = (free_port(), free_port());
    let config = session_sidecar::config::Config::try_parse_from([
        "session-sidecar",
        "--listen",
        &format!("127.0.0.1:{api}"),
        "--admin-listen",
        &format!("127.0.0.1:{admin}"),
        "--service-name",
        "sessions",
        "--log-format",
        "text",
    ])
    .unwrap();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let sidecar = tokio::spawn(session_sidecar::run(config, stopped));
    // Traffic starts once the sidecar listens (it binds after building its store).
    let listening = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", api)).is_err() {
        assert!(Instant::now() < listening, "the sidecar did not listen");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("rules.yaml"),
        serde_json::to_string(&json!({"groups": session_operator::slo::rule_groups(&ss)})).unwrap(),
    )
    .unwrap();
    let prometheus_port = free_port();
    std::fs::write(
        dir.path().join("prometheus.yml"),
        format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nrule_files: [rules.yaml]\nscrape_configs:\n  - job_name: sidecars\n    static_configs: [{{targets: ['127.0.0.1:{admin}']}}]\n"
        ),
    )
    .unwrap();
    let _prometheus = Prometheus(
        Command::new("prometheus")
            .current_dir(dir.path())
            .args([
                "--config.file=prometheus.yml",
                "--storage.tsdb.path=data",
                &format!("--web.listen-address=127.0.0.1:{prometheus_port}"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (tests/run.sh installs Debian's prometheus)"),
    );

    // Traffic while Prometheus scrapes: creates, hits and 404s.
    let traffic = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(8);
        while Instant::now() < deadline {
            let (status, body) = http(
                api,
                "POST",
                "/v1/sessions",
                Some(json!({"user_id": "alice"})),
            );
            if status == 201 {
                let id = serde_json::from_str::<Value>(&body).unwrap()["session_id"]
                    .as_str()
                    .unwrap()
                    .to_owned();
                assert_eq!(http(api, "GET", &format!("/v1/sessions/{id}"), None).0, 200);
            }
            let unknown = session_sidecar::ids::new_session_id(0);
            assert_eq!(
                http(api, "GET", &format!("/v1/sessions/{unknown}"), None).0,
                404
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    });

    let series = tokio::task::spawn_blocking(move || {
        let requests = query_until(
            prometheus_port,
            r#"session_requests_total{session_service="sessions"}"#,
            |r| !r.is_empty(),
        );
        let errors = query_until(
            prometheus_port,
            r#"session_service:request_errors:ratio_rate5m{session_service="sessions"}"#,
            |r| !r.is_empty(),
        );
        let slow = query_until(
            prometheus_port,
            r#"session_service:request_slow:ratio_rate5m{session_service="sessions"}"#,
            |r| !r.is_empty(),
        );
        (requests, errors, slow)
    })
    .await
    .unwrap();
    traffic.await.unwrap();
    let (requests, errors, slow) = series;
    let routes: Vec<&str> = requests
        .iter()
        .filter_map(|s| s["metric"]["route"].as_str())
        .collect();
    assert!(routes.contains(&"/v1/sessions"), "{routes:?}");
    assert_eq!(errors[0]["value"][1], "0", "no 5xx: {errors:?}");
    let slow: f64 = slow[0]["value"][1].as_str().unwrap().parse().unwrap();
    assert!((0.0..=1.0).contains(&slow), "a ratio: {slow}");
    // Every alert rule loaded and evaluated without error.
    let (_, rules) = http(prometheus_port, "GET", "/api/v1/rules?type=alert", None);
    let rules: Value = serde_json::from_str(&rules).unwrap();
    let alerts: Vec<&Value> = rules["data"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .collect();
    assert_eq!(alerts.len(), 4);
    for alert in alerts {
        assert_eq!(alert["health"], "ok", "{alert}");
        assert_eq!(alert["state"], "inactive", "{alert}");
    }
    // What `session-operator status --prometheus` shows: the SLIs of every window with data,
    // and their burn rates.
    let slis =
        session_operator::status_report::slis(&format!("http://127.0.0.1:{prometheus_port}"), &ss)
            .await
            .unwrap();
    let short = &slis[0];
    assert_eq!(short.window, "5m");
    assert_eq!(short.availability, Some(1.0), "no 5xx: {short:?}");
    assert_eq!(short.availability_burn, Some(0.0));
    let latency = short.latency.expect("latency SLI over 5m");
    assert!((0.0..=1.0).contains(&latency), "{short:?}");
    assert!(short.latency_burn.is_some_and(|b| b >= 0.0));
    let refused = session_operator::status_report::query(
        &format!("http://127.0.0.1:{prometheus_port}"),
        "not a query(",
    )
    .await;
    assert!(
        refused.is_err_and(|e| e.to_string().contains("refused the query")),
        "a bad query is reported in words"
    );
    stop.send(true).unwrap();
    sidecar.await.unwrap().unwrap();
}
