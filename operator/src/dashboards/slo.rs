//! The SLO dashboard: both SLIs and the error budget left over the SLO window, the burn rate
//! of every window the alerts look at with the alerts' thresholds drawn as lines, and the
//! traffic and latency they come from.

use super::{Panel, Unit, service_selector};
use crate::crd::SessionService;
use crate::slo::{self, Objective};

pub(crate) fn panels(ss: &SessionService) -> Vec<Panel> {
    let select = service_selector(ss);
    let days = ss.spec.slo.window_days;
    let mut panels = Vec::new();
    let objectives = slo::objectives(ss);
    for objective in &objectives {
        panels.extend(window_stats(objective, &select, days));
    }
    for objective in &objectives {
        panels.push(burn_rates(ss, objective, &select));
    }
    let user = format!("{select},{}", slo::USER_TRAFFIC);
    let threshold = ss.spec.slo.latency_threshold_seconds;
    panels.push(
        Panel::graph(
            "User requests and 5xx",
            "Requests per second the SLIs count (probes and scrapes are not user traffic), and those answered with a 5xx.",
            Unit::PerSecond,
        )
        .query(
            &format!("sum(rate(session_requests_total{{{user}}}[$__rate_interval]))"),
            "all",
        )
        .query(
            &format!(
                r#"sum(rate(session_requests_total{{{user},code=~"5.."}}[$__rate_interval]))"#
            ),
            "5xx",
        ),
    );
    panels.push(
        Panel::graph(
            "Latency p99 against the threshold",
            "The 99th percentile of user requests; the line is the latency SLO's threshold.",
            Unit::Seconds,
        )
        .query(
            &format!(
                "histogram_quantile(0.99, sum by (le) (rate(session_request_duration_seconds_bucket{{{user}}}[$__rate_interval])))"
            ),
            "p99",
        )
        .threshold(threshold, "red"),
    );
    panels
}

/// The SLI and the budget left, averaged over the SLO window from the 5-minute recording.
fn window_stats(objective: &Objective, select: &str, days: i32) -> [Panel; 2] {
    let target = objective.objective / 100.0;
    let bad = format!(
        "avg_over_time({}:ratio_rate5m{{{select}}}[{days}d])",
        objective.record
    );
    [
        Panel::stat(
            &format!("{} over {days} days", objective.title),
            &format!(
                "Share of good requests over the SLO window; the objective is {}%.",
                objective.objective
            ),
            Unit::Ratio,
        )
        .query(&format!("1 - {bad}"), "")
        .below("red")
        .threshold(target, "green"),
        Panel::stat(
            &format!("{} error budget left", objective.title),
            &format!(
                "The share of the {days}-day error budget not yet spent (negative once overspent)."
            ),
            Unit::Ratio,
        )
        .query(&format!("1 - {bad} / (1 - {target})"), "")
        .below("red")
        .threshold(0.0, "orange")
        .threshold(0.25, "green"),
    ]
}

/// The burn rate of every recorded window; lines at each alert's threshold.
fn burn_rates(ss: &SessionService, objective: &Objective, select: &str) -> Panel {
    let target = objective.objective / 100.0;
    let mut panel = Panel::graph(
        &format!("{} burn rate by window", objective.title),
        "How fast the error budget burns (1 spends it exactly over the SLO window). An alert fires when both its long and its short window are above its line: red pages, orange opens a ticket.",
        Unit::Number,
    );
    for window in slo::WINDOWS {
        panel = panel.query(
            &format!(
                "{}:ratio_rate{window}{{{select}}} / (1 - {target})",
                objective.record
            ),
            window,
        );
    }
    for burn in slo::burn_thresholds(ss) {
        let color = if burn.severity == "page" {
            "red"
        } else {
            "orange"
        };
        panel = panel.threshold(burn.rate, color);
    }
    panel
}
