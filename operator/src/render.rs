//! `session-operator render`: the operator's job without a cluster. Reads SessionService
//! manifests, checks them as the API server would (schema, defaults, CEL rules) and returns
//! every object a reconcile would apply.

use anyhow::{Context, bail};
use kube::ResourceExt;
use serde_json::Value;

use crate::crd::SessionService;
use crate::resources::{self, Secrets};

/// Parses and checks every SessionService in a multi-document YAML text; other kinds are
/// refused, so a typo in `kind` is not silently ignored.
pub fn parse(text: &str, namespace: &str) -> anyhow::Result<Vec<SessionService>> {
    let validator = schema_validator()?;
    let mut services = Vec::new();
    for (index, document) in crate::yaml::from_yaml_documents(text)?
        .into_iter()
        .enumerate()
    {
        let kind = document
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let api_version = document
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if kind != "SessionService" || api_version != "sessions.io/v1alpha1" {
            bail!(
                "document {}: expected a sessions.io/v1alpha1 SessionService, found {api_version:?} {kind:?}",
                index + 1
            );
        }
        let problems = schema_problems(&validator, &document);
        if !problems.is_empty() {
            bail!("document {}: {}", index + 1, problems.join("; "));
        }
        let mut ss: SessionService = serde_json::from_value(document)
            .with_context(|| format!("document {}: invalid SessionService", index + 1))?;
        if ss.metadata.name.is_none() {
            bail!("document {}: metadata.name is required", index + 1);
        }
        if ss.namespace().is_none() {
            ss.metadata.namespace = Some(namespace.to_owned());
        }
        ss.validate_cel()
            .map_err(|errors| anyhow::anyhow!("SessionService {}: {errors}", ss.name_any()))?;
        services.push(ss);
    }
    Ok(services)
}

/// The CRD's OpenAPI schema (types, ranges, patterns, enums), as the API server checks it.
fn schema_validator() -> anyhow::Result<jsonschema::Validator> {
    use kube::CustomResourceExt;
    let crd = SessionService::crd();
    let schema = crd
        .spec
        .versions
        .first()
        .and_then(|v| v.schema.as_ref())
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .context("the CRD has no schema")?;
    jsonschema::validator_for(&serde_json::to_value(schema)?)
        .map_err(|e| anyhow::anyhow!("the CRD schema does not compile: {e}"))
}

fn schema_problems(validator: &jsonschema::Validator, document: &Value) -> Vec<String> {
    validator
        .iter_errors(document)
        .map(|e| format!("{}: {e}", e.instance_path))
        .collect()
}

/// Every object the operator would apply for `ss`, as JSON values in apply order.
pub fn objects(ss: &SessionService, secrets: &Secrets) -> anyhow::Result<Vec<Value>> {
    resources::desired(ss, secrets, &resources::Runtime::default())?
        .apply
        .into_iter()
        .map(|child| Ok(serde_json::to_value(&child.object)?))
        .collect()
}
