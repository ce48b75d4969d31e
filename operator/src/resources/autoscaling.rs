//! The HorizontalPodAutoscaler of the session service.

use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HPAScalingRules, HorizontalPodAutoscaler,
    HorizontalPodAutoscalerBehavior, HorizontalPodAutoscalerSpec, MetricIdentifier, MetricSpec,
    MetricTarget, PodsMetricSource, ResourceMetricSource,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use super::{BuildError, Desired, Names, Part, meta};
use crate::capabilities::Capabilities;
use crate::crd::SessionService;

/// The Pods metric of p99 request latency per pod, in seconds (served by prometheus-adapter
/// from `session_request_duration_seconds_bucket`; see the README).
pub(crate) const P99_METRIC: &str = "session_request_duration_seconds_p99";

/// The HPA in the newest autoscaling API the server serves (`v2`, else `v2beta2`, whose
/// fields are the same); none where it serves neither.
pub(crate) fn build(
    ss: &SessionService,
    api: &Capabilities,
    out: &mut Desired,
) -> Result<(), BuildError> {
    let names = Names::of(ss);
    let Some(resource) = &api.autoscaling else {
        return Ok(());
    };
    if ss.spec.autoscaling.enabled {
        out.add_as(Part::Autoscaling, resource, hpa(ss, &names))?;
    } else {
        out.remove(Part::Autoscaling, resource.clone(), names.server());
    }
    Ok(())
}

fn hpa(ss: &SessionService, names: &Names) -> HorizontalPodAutoscaler {
    let spec = &ss.spec.autoscaling;
    let mut metrics = vec![MetricSpec {
        type_: "Resource".to_owned(),
        resource: Some(ResourceMetricSource {
            name: "cpu".to_owned(),
            target: MetricTarget {
                type_: "Utilization".to_owned(),
                average_utilization: Some(spec.target_cpu_utilization),
                ..MetricTarget::default()
            },
        }),
        ..MetricSpec::default()
    }];
    if let Some(target) = &spec.p99_latency_target {
        metrics.push(MetricSpec {
            type_: "Pods".to_owned(),
            pods: Some(PodsMetricSource {
                metric: MetricIdentifier {
                    name: P99_METRIC.to_owned(),
                    selector: None,
                },
                target: MetricTarget {
                    type_: "AverageValue".to_owned(),
                    average_value: Some(Quantity(target.clone())),
                    ..MetricTarget::default()
                },
            }),
            ..MetricSpec::default()
        });
    }
    HorizontalPodAutoscaler {
        metadata: meta(ss, names.server(), "server"),
        spec: HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some("apps/v1".to_owned()),
                kind: "Deployment".to_owned(),
                name: names.server(),
            },
            min_replicas: Some(spec.min_replicas),
            max_replicas: spec.max_replicas,
            metrics: Some(metrics),
            // Scale up at once, down slowly: a latency-sensitive service pays more for too
            // few pods than for a few idle ones.
            behavior: Some(HorizontalPodAutoscalerBehavior {
                scale_down: Some(HPAScalingRules {
                    stabilization_window_seconds: Some(300),
                    ..HPAScalingRules::default()
                }),
                scale_up: Some(HPAScalingRules {
                    stabilization_window_seconds: Some(0),
                    ..HPAScalingRules::default()
                }),
            }),
        },
        status: None,
    }
}
