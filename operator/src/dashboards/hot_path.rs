//! The hot-path dashboard: what the sidecars and the session service answer and how fast, and
//! the local cache in front of Redis.

use super::{Panel, Unit, service_selector};
use crate::crd::SessionService;
use crate::slo::USER_TRAFFIC;

pub(crate) fn panels(ss: &SessionService) -> Vec<Panel> {
    let select = service_selector(ss);
    let user = format!("{select},{USER_TRAFFIC}");
    let rate = |metric: &str| format!("sum(rate({metric}{{{select}}}[$__rate_interval]))");
    let quantile = |q: f64| {
        format!(
            "histogram_quantile({q}, sum by (le) (rate(session_request_duration_seconds_bucket{{{user}}}[$__rate_interval])))"
        )
    };
    let hits = rate("session_cache_hits_total");
    let misses = rate("session_cache_misses_total");
    vec![
        Panel::graph(
            "Requests by route and code",
            "Requests per second answered by every sidecar and session-service pod, by route and status code.",
            Unit::PerSecond,
        )
        .query(
            &format!(
                "sum by (route, code) (rate(session_requests_total{{{select}}}[$__rate_interval]))"
            ),
            "{{route}} {{code}}",
        )
        .size(24, 8),
        Panel::graph(
            "Latency p50, p99, p99.9",
            "Quantiles of user requests over all routes, from the request-duration histogram.",
            Unit::Seconds,
        )
        .query(&quantile(0.5), "p50")
        .query(&quantile(0.99), "p99")
        .query(&quantile(0.999), "p99.9"),
        Panel::heatmap(
            "Latency distribution",
            "Requests per latency bucket over time: a second band appears when misses or Redis slow down.",
            &format!(
                "sum by (le) (increase(session_request_duration_seconds_bucket{{{user}}}[$__rate_interval]))"
            ),
        ),
        Panel::graph(
            "Latency p99 by route",
            "The 99th percentile of each route.",
            Unit::Seconds,
        )
        .query(
            &format!(
                "histogram_quantile(0.99, sum by (le, route) (rate(session_request_duration_seconds_bucket{{{user}}}[$__rate_interval])))"
            ),
            "{{route}}",
        ),
        Panel::graph(
            "Cache hit ratio",
            "Share of session lookups answered from the local cache.",
            Unit::Ratio,
        )
        .query(&format!("{hits} / ({hits} + {misses})"), "hit ratio")
        .range(0.0, 1.0),
        Panel::graph(
            "Cache invalidations and flushes",
            "Entries dropped because their session changed, whole-cache flushes (the invalidation connection was lost or came back), and fills discarded because an invalidation overtook them.",
            Unit::PerSecond,
        )
        .query(&rate("session_cache_invalidations_total"), "invalidations")
        .query(&rate("session_cache_flushes_total"), "flushes")
        .query(&rate("session_cache_fills_discarded_total"), "fills discarded"),
        Panel::graph(
            "Cache size",
            "Bytes held by every local cache together.",
            Unit::Bytes,
        )
        .query(&format!("sum(session_cache_bytes{{{select}}})"), "bytes"),
        Panel::stat(
            "Invalidation connections down",
            "Pods whose Redis invalidation connection is down (their cache is bypassed until it is back).",
            Unit::Number,
        )
        .query(
            &format!("count(session_cache_tracking_connected{{{select}}} == 0) or vector(0)"),
            "",
        )
        .threshold(1.0, "red"),
        Panel::stat(
            "Circuit breakers open",
            "Pods whose Redis circuit breaker is open (misses and writes answer 503 at once) or half-open (one trial call).",
            Unit::Number,
        )
        .query(
            &format!("count(session_circuit_breaker_state{{{select}}} > 0) or vector(0)"),
            "",
        )
        .threshold(1.0, "red"),
        Panel::graph(
            "Requests refused by the limits",
            "Requests answered 503 because the concurrency limit was reached (overloaded) or they ran past the request timeout.",
            Unit::PerSecond,
        )
        .query(
            &format!(
                "sum by (reason) (rate(session_requests_refused_total{{{select}}}[$__rate_interval]))"
            ),
            "{{reason}}",
        ),
        Panel::graph(
            "Circuit breaker state by pod",
            "0 closed, 1 half-open, 2 open.",
            Unit::Number,
        )
        .query(
            &format!("max by (instance) (session_circuit_breaker_state{{{select}}})"),
            "{{instance}}",
        )
        .mapping(0, "closed", "green")
        .mapping(1, "half-open", "orange")
        .mapping(2, "open", "red")
        .range(0.0, 2.0),
    ]
}
