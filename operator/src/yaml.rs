//! YAML in and out.
//!
//! The workspace builds serde_json with `arbitrary_precision` (the sidecar keeps client numbers
//! exactly), which makes a `serde_json::Value` number serialize as a private map through any
//! serializer other than serde_json's own. Everything printed as YAML therefore goes through
//! [`Plain`], which writes numbers as plain integers or floats.

use serde::Serialize;
use serde::ser::{SerializeMap, SerializeSeq, Serializer};
use serde_json::Value;

/// A JSON value that serializes its numbers as numbers through any serializer.
struct Plain<'a>(&'a Value);

impl Serialize for Plain<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Value::Null => s.serialize_unit(),
            Value::Bool(b) => s.serialize_bool(*b),
            Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
                (Some(i), _, _) => s.serialize_i64(i),
                (None, Some(u), _) => s.serialize_u64(u),
                (None, None, Some(f)) => s.serialize_f64(f),
                (None, None, None) => s.serialize_str(&n.to_string()),
            },
            Value::String(text) => s.serialize_str(text),
            Value::Array(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(&Plain(item))?;
                }
                seq.end()
            }
            Value::Object(fields) => {
                let mut map = s.serialize_map(Some(fields.len()))?;
                for (key, value) in fields {
                    map.serialize_entry(key, &Plain(value))?;
                }
                map.end()
            }
        }
    }
}

/// One YAML document.
pub fn to_yaml(value: &impl Serialize) -> anyhow::Result<String> {
    Ok(serde_saphyr::to_string(&Plain(&serde_json::to_value(
        value,
    )?))?)
}

/// Several YAML documents, each starting with `---`.
pub fn to_yaml_documents(values: &[Value]) -> anyhow::Result<String> {
    let mut out = String::new();
    for value in values {
        out.push_str("---\n");
        out.push_str(&to_yaml(value)?);
    }
    Ok(out)
}

/// Every non-empty document of a multi-document YAML text.
pub fn from_yaml_documents(text: &str) -> anyhow::Result<Vec<Value>> {
    let documents: Vec<Value> = serde_saphyr::from_multiple(text)?;
    Ok(documents.into_iter().filter(|d| !d.is_null()).collect())
}
