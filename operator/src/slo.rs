//! SLO rules: the SLIs as recording rules and multi-window, multi-burn-rate alerts (Google
//! SRE workbook, chapter 5) for availability and latency, for one SessionService.
//!
//! A burn rate of 1 spends exactly the error budget over the SLO window. Each alert pairs a
//! long window (is the budget really burning?) with a short one (is it still burning?), so it
//! fires within minutes of a fast burn and resets soon after the burn stops.

use serde_json::{Value, json};

use crate::crd::SessionService;
use kube::ResourceExt;

/// The windows the SLIs are recorded over.
pub(crate) const WINDOWS: &[&str] = &["5m", "30m", "1h", "2h", "6h", "1d", "3d"];

/// One alert condition: burning `budget_percent` of the budget within `long_hours`.
struct Burn {
    budget_percent: u32,
    long: &'static str,
    long_hours: u32,
    short: &'static str,
}

/// The workbook's thresholds: 2% of the budget in 1 h or 5% in 6 h pages; 10% in 1 d or in
/// 3 d opens a ticket.
const PAGE: &[Burn] = &[
    Burn {
        budget_percent: 2,
        long: "1h",
        long_hours: 1,
        short: "5m",
    },
    Burn {
        budget_percent: 5,
        long: "6h",
        long_hours: 6,
        short: "30m",
    },
];
const TICKET: &[Burn] = &[
    Burn {
        budget_percent: 10,
        long: "1d",
        long_hours: 24,
        short: "2h",
    },
    Burn {
        budget_percent: 10,
        long: "3d",
        long_hours: 72,
        short: "6h",
    },
];

/// What one SLO measures.
pub(crate) struct Objective {
    /// `availability` or `latency`, the `slo` label of the alerts.
    pub slo: &'static str,
    /// `Availability` or `Latency`, for people.
    pub title: &'static str,
    /// Recorded ratio of bad requests, per window (`<record>:ratio_rate<window>`).
    pub record: &'static str,
    /// Target share of good requests, in percent.
    pub objective: f64,
    /// Words for the alert text.
    bad: String,
}

/// The two SLOs of a SessionService.
pub(crate) fn objectives(ss: &SessionService) -> [Objective; 2] {
    let slo = &ss.spec.slo;
    [
        Objective {
            slo: "availability",
            title: "Availability",
            record: "session_service:request_errors",
            objective: slo.availability_objective,
            bad: "requests failing with 5xx".to_owned(),
        },
        Objective {
            slo: "latency",
            title: "Latency",
            record: "session_service:request_slow",
            objective: slo.latency_objective,
            bad: format!(
                "requests slower than {} ms",
                slo.latency_threshold_seconds * 1000.0
            ),
        },
    ]
}

/// One alert condition's burn-rate threshold: above it in both windows, the alert fires.
pub(crate) struct BurnThreshold {
    /// `page` or `ticket`.
    pub severity: &'static str,
    /// The share of the budget it would spend within `long`.
    pub budget_percent: u32,
    pub long: &'static str,
    pub short: &'static str,
    pub rate: f64,
}

/// Every alert condition's threshold, pages first.
pub(crate) fn burn_thresholds(ss: &SessionService) -> Vec<BurnThreshold> {
    let window_hours = u32::try_from(ss.spec.slo.window_days).unwrap_or(30) * 24;
    let with = |severity, burns: &'static [Burn]| {
        burns.iter().map(move |b| BurnThreshold {
            severity,
            budget_percent: b.budget_percent,
            long: b.long,
            short: b.short,
            rate: f64::from(b.budget_percent * window_hours) / f64::from(100 * b.long_hours),
        })
    };
    with("page", PAGE).chain(with("ticket", TICKET)).collect()
}

/// Probes and scrapes are not user traffic.
pub(crate) const USER_TRAFFIC: &str = r#"route!~"/healthz|/readyz|/metrics""#;

/// The `groups` of the PrometheusRule (also a valid `promtool` rule file).
pub fn rule_groups(ss: &SessionService) -> Value {
    let name = ss.name_any();
    let slo = &ss.spec.slo;
    let select = format!(r#"session_service="{name}",{USER_TRAFFIC}"#);
    let le = le_matcher(slo.latency_threshold_seconds);
    let mut records = Vec::new();
    for window in WINDOWS {
        // Without any 5xx series the quotient would be absent, not 0: `or 0 * total` keeps
        // the SLI defined for a service that has never failed.
        let total = format!(
            "sum by (session_service) (rate(session_requests_total{{{select}}}[{window}]))"
        );
        records.push(json!({
            "record": format!("session_service:request_errors:ratio_rate{window}"),
            "expr": format!(
                "(\n  sum by (session_service) (rate(session_requests_total{{{select},code=~\"5..\"}}[{window}]))\n  or\n  0 * {total}\n)\n/\n{total}"
            ),
        }));
        records.push(json!({
            "record": format!("session_service:request_slow:ratio_rate{window}"),
            "expr": format!(
                "1 - (\n  sum by (session_service) (rate(session_request_duration_seconds_bucket{{{select},{le}}}[{window}]))\n  /\n  sum by (session_service) (rate(session_request_duration_seconds_count{{{select}}}[{window}]))\n)"
            ),
        }));
    }
    let mut alerts = Vec::new();
    for objective in &objectives(ss) {
        alerts.push(alert(ss, objective, "page", "2m"));
        alerts.push(alert(ss, objective, "ticket", "15m"));
    }
    json!([
        {"name": format!("session-service-{name}-sli"), "interval": "30s", "rules": records},
        {"name": format!("session-service-{name}-slo-alerts"), "rules": alerts},
    ])
}

/// The alert name for an SLO and severity, e.g. `SessionServiceAvailabilityBurnRatePage`.
pub fn alert_name(slo: &str, severity: &str) -> String {
    let title = |s: &str| {
        let mut chars = s.chars();
        chars
            .next()
            .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
            .unwrap_or_default()
    };
    format!("SessionService{}BurnRate{}", title(slo), title(severity))
}

fn alert(ss: &SessionService, objective: &Objective, severity: &str, for_: &str) -> Value {
    let name = ss.name_any();
    let budget = format!("(1 - {} / 100)", objective.objective);
    let burns: Vec<BurnThreshold> = burn_thresholds(ss)
        .into_iter()
        .filter(|b| b.severity == severity)
        .collect();
    let conditions: Vec<String> = burns
        .iter()
        .map(|b| {
            format!(
                "(\n  {r}:ratio_rate{long}{{session_service=\"{name}\"}} > {factor} * {budget}\nand\n  {r}:ratio_rate{short}{{session_service=\"{name}\"}} > {factor} * {budget}\n)",
                r = objective.record,
                long = b.long,
                short = b.short,
                factor = b.rate,
            )
        })
        .collect();
    let windows: Vec<String> = burns
        .iter()
        .map(|b| format!("{}% of the budget within {}", b.budget_percent, b.long))
        .collect();
    json!({
        "alert": alert_name(objective.slo, severity),
        "expr": conditions.join("\nor\n"),
        "for": for_,
        "labels": {"severity": severity, "slo": objective.slo, "session_service": name},
        "annotations": {
            "summary": format!(
                "SessionService {name} is burning its {} error budget",
                objective.slo
            ),
            "description": format!(
                "The share of {} would spend {} of the {}-day error budget of the {}% {} objective.",
                objective.bad,
                windows.join(" or "),
                ss.spec.slo.window_days,
                objective.objective,
                objective.slo,
            ),
        },
    })
}

/// Matches the bucket of the threshold. Prometheus 3 writes integral bucket bounds as `1.0`
/// where the client wrote `1`, so integral bounds match both spellings.
fn le_matcher(threshold: f64) -> String {
    if threshold.fract() == 0.0 {
        format!(r#"le=~"{threshold}|{threshold}.0""#)
    } else {
        format!(r#"le="{threshold}""#)
    }
}
