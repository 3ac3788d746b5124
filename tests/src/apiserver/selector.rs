//! Label and field selectors, as the API server parses and applies them.
//!
//! Labels: comma-separated requirements, all of which must hold: `k=v` / `k==v`, `k!=v`
//! (also true without the label), `k` (exists), `!k` (does not exist), `k in (a,b)`,
//! `k notin (a,b)` (also true without the label). Fields: `metadata.name` and
//! `metadata.namespace` with `=`, `==` or `!=`; other fields are rejected, as the real server
//! rejects fields a resource does not index.

use serde_json::Value;

/// A parsed label selector; the empty selector matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelector(Vec<LabelRequirement>);

#[derive(Clone, Debug, PartialEq, Eq)]
enum LabelRequirement {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    NotExists(String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

impl LabelSelector {
    /// Parses a `labelSelector` query value.
    pub fn parse(text: &str) -> Result<LabelSelector, String> {
        let mut requirements = Vec::new();
        for term in split_terms(text)? {
            requirements.push(parse_label_term(term)?);
        }
        Ok(LabelSelector(requirements))
    }

    /// Whether `object`'s `metadata.labels` satisfy every requirement.
    pub fn matches(&self, object: &Value) -> bool {
        let labels = object.pointer("/metadata/labels");
        let label = |key: &str| labels.and_then(|l| l.get(key)).and_then(Value::as_str);
        self.0.iter().all(|requirement| match requirement {
            LabelRequirement::Equals(k, v) => label(k) == Some(v),
            LabelRequirement::NotEquals(k, v) => label(k) != Some(v),
            LabelRequirement::Exists(k) => label(k).is_some(),
            LabelRequirement::NotExists(k) => label(k).is_none(),
            LabelRequirement::In(k, values) => {
                label(k).is_some_and(|l| values.iter().any(|v| v == l))
            }
            LabelRequirement::NotIn(k, values) => {
                !label(k).is_some_and(|l| values.iter().any(|v| v == l))
            }
        })
    }
}

/// Splits at commas outside parentheses, dropping empty terms only for an empty selector.
fn split_terms(text: &str) -> Result<Vec<&str>, String> {
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    let (mut terms, mut depth, mut start) = (Vec::new(), 0usize, 0);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth = depth
                    .checked_sub(1)
                    .ok_or_else(|| format!("unbalanced ')' in selector {text:?}"))?;
            }
            ',' if depth == 0 => {
                terms.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(format!("unbalanced '(' in selector {text:?}"));
    }
    terms.push(&text[start..]);
    Ok(terms)
}

fn parse_label_term(term: &str) -> Result<LabelRequirement, String> {
    let term = term.trim();
    if let Some(key) = term.strip_prefix('!') {
        return Ok(LabelRequirement::NotExists(key_of(key, term)?));
    }
    for (operator, negated) in [(" notin ", true), (" in ", false)] {
        if let Some((key, values)) = term.split_once(operator) {
            let values = values
                .trim()
                .strip_prefix('(')
                .and_then(|v| v.strip_suffix(')'))
                .ok_or_else(|| format!("expected a parenthesised set in {term:?}"))?;
            let values = values.split(',').map(|v| v.trim().to_string()).collect();
            let key = key_of(key, term)?;
            return Ok(if negated {
                LabelRequirement::NotIn(key, values)
            } else {
                LabelRequirement::In(key, values)
            });
        }
    }
    if let Some((key, value)) = term.split_once("!=") {
        return Ok(LabelRequirement::NotEquals(
            key_of(key, term)?,
            value_of(value, term)?,
        ));
    }
    if let Some((key, value)) = term.split_once("==").or_else(|| term.split_once('=')) {
        return Ok(LabelRequirement::Equals(
            key_of(key, term)?,
            value_of(value, term)?,
        ));
    }
    Ok(LabelRequirement::Exists(key_of(term, term)?))
}

/// A label key: non-empty, no whitespace or operator characters.
fn key_of(key: &str, term: &str) -> Result<String, String> {
    let key = key.trim();
    let valid = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
    if valid {
        Ok(key.to_string())
    } else {
        Err(format!("invalid label key {key:?} in {term:?}"))
    }
}

/// A label value: possibly empty, no whitespace or operator characters.
fn value_of(value: &str, term: &str) -> Result<String, String> {
    let value = value.trim();
    if value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        Ok(value.to_string())
    } else {
        Err(format!("invalid label value {value:?} in {term:?}"))
    }
}

/// A parsed field selector over `metadata.name` / `metadata.namespace`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldSelector(Vec<FieldRequirement>);

#[derive(Clone, Debug, PartialEq, Eq)]
struct FieldRequirement {
    /// JSON pointer of the field.
    pointer: &'static str,
    value: String,
    negated: bool,
}

impl FieldSelector {
    /// Parses a `fieldSelector` query value.
    pub fn parse(text: &str) -> Result<FieldSelector, String> {
        let mut requirements = Vec::new();
        for term in split_terms(text)? {
            let term = term.trim();
            let (field, value, negated) = if let Some((f, v)) = term.split_once("!=") {
                (f, v, true)
            } else if let Some((f, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                (f, v, false)
            } else {
                return Err(format!(
                    "invalid field selector term {term:?}: expected field=value"
                ));
            };
            let pointer = match field.trim() {
                "metadata.name" => "/metadata/name",
                "metadata.namespace" => "/metadata/namespace",
                other => return Err(format!("field label not supported: {other}")),
            };
            requirements.push(FieldRequirement {
                pointer,
                value: value.trim().to_string(),
                negated,
            });
        }
        Ok(FieldSelector(requirements))
    }

    /// Whether `object` satisfies every requirement.
    pub fn matches(&self, object: &Value) -> bool {
        self.0.iter().all(|r| {
            let actual = object
                .pointer(r.pointer)
                .and_then(Value::as_str)
                .unwrap_or("");
            (actual == r.value) != r.negated
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn labelled(labels: Value) -> Value {
        json!({"metadata": {"name": "a", "namespace": "ns", "labels": labels}})
    }

    #[test]
    fn label_requirements_match_as_kubernetes_defines_them() {
        let plain = labelled(json!({"app": "web", "tier": "front"}));
        let headless = labelled(json!({"app": "web", "service.kubernetes.io/headless": ""}));
        let bare = json!({"metadata": {"name": "b"}});
        let cases: [(&str, [bool; 3]); 11] = [
            ("", [true, true, true]),
            ("app=web", [true, true, false]),
            ("app==web", [true, true, false]),
            ("app!=web", [false, false, true]),
            ("tier", [true, false, false]),
            ("!service.kubernetes.io/headless", [true, false, true]),
            (
                "!service.kubernetes.io/headless,!service.kubernetes.io/service-proxy-name",
                [true, false, true],
            ),
            ("app=web,tier=front", [true, false, false]),
            ("tier in (front, back)", [true, false, false]),
            ("tier notin (back)", [true, true, true]),
            ("app in (db),tier", [false, false, false]),
        ];
        for (text, expected) in cases {
            let selector = LabelSelector::parse(text).unwrap();
            let got = [&plain, &headless, &bare].map(|o| selector.matches(o));
            assert_eq!(got, expected, "{text:?}");
        }
    }

    #[test]
    fn malformed_label_selectors_are_rejected() {
        for text in [
            "app=(web",
            "a b=c",
            "=web",
            "!",
            "tier in front",
            "app=we b",
        ] {
            assert!(LabelSelector::parse(text).is_err(), "{text:?}");
        }
    }

    #[test]
    fn field_selectors_cover_name_and_namespace_only() {
        let object = labelled(json!({}));
        let matches = |text: &str| FieldSelector::parse(text).unwrap().matches(&object);
        assert!(matches("metadata.name=a"));
        assert!(matches("metadata.name==a,metadata.namespace=ns"));
        assert!(!matches("metadata.name=b"));
        assert!(matches("metadata.name!=b"));
        assert!(!matches("metadata.namespace!=ns"));
        assert!(FieldSelector::parse("spec.clusterIP=1.2.3.4")
            .unwrap_err()
            .contains("not supported"));
        assert!(FieldSelector::parse("metadata.name").is_err());
    }
}
