//! Search semantics, shared by every store: the store narrows candidates,
//! this module decides exactly which elements match, so both backends give
//! identical answers.

use super::{Config, ConfigName, DataElement};
use serde::Serialize;
use serde_json::Value;

/// `data.KEY=VALUE`: the value at `path` inside an element must match `value`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    /// Object keys from the element down to the compared value.
    pub path: Vec<String>,
    /// Text from the query string.
    pub value: String,
}

/// A parsed `/search` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchQuery {
    /// Only this config, when given.
    pub name: Option<ConfigName>,
    /// All must hold for one element.
    pub conditions: Vec<Condition>,
}

/// One result: an element and its config's name.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SearchHit {
    /// The config the element belongs to.
    pub name: ConfigName,
    /// The matching element.
    pub data: DataElement,
}

impl Condition {
    /// Whether `element` holds a value at this path that the text matches.
    pub fn matches(&self, element: &DataElement) -> bool {
        let mut segments = self.path.iter();
        let Some(first) = segments.next() else { return false };
        let mut current = element.get(first);
        for seg in segments {
            current = current.and_then(|v| v.get(seg));
        }
        current.is_some_and(|v| text_matches(&self.value, v))
    }
}

/// API.md's typed matching: a string equal to the text; a number equal to
/// it when it parses as a number; a boolean for `true`/`false`; null for
/// `null`. Arrays and objects never match.
pub fn text_matches(text: &str, value: &Value) -> bool {
    match value {
        Value::String(s) => s == text,
        Value::Number(n) => {
            if let (Some(a), Ok(b)) = (n.as_i64(), text.parse::<i64>()) {
                a == b
            } else {
                matches!((n.as_f64(), text.parse::<f64>()), (Some(a), Ok(b)) if a == b)
            }
        }
        Value::Bool(b) => text == if *b { "true" } else { "false" },
        Value::Null => text == "null",
        Value::Array(_) | Value::Object(_) => false,
    }
}

impl SearchQuery {
    /// Whether one element matches every condition.
    pub fn element_matches(&self, element: &DataElement) -> bool {
        self.conditions.iter().all(|c| c.matches(element))
    }

    /// The results among `candidates` (a superset the store returned), in
    /// the order given (stores return configs sorted by name).
    pub fn results(&self, candidates: Vec<Config>) -> Vec<SearchHit> {
        candidates
            .into_iter()
            .filter(|c| self.name.as_ref().is_none_or(|n| *n == c.name))
            .flat_map(|config| {
                let name = config.name;
                config
                    .data
                    .into_iter()
                    .filter(|e| self.element_matches(e))
                    .map(move |data| SearchHit {
                        name: name.clone(),
                        data,
                    })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn typed_matching_follows_the_contract() {
        assert!(text_matches("1412", &json!(1412)));
        assert!(text_matches("1412", &json!("1412")));
        assert!(text_matches("1412", &json!(1412.0)));
        assert!(text_matches("1.5", &json!(1.5)));
        assert!(!text_matches("1412", &json!(1413)));
        assert!(text_matches("true", &json!(true)));
        assert!(!text_matches("1", &json!(true)));
        assert!(text_matches("null", &json!(null)));
        assert!(text_matches("true", &json!("true")));
        assert!(!text_matches("x", &json!(["x"])));
        assert!(!text_matches("abc", &json!(0)));
    }

    #[test]
    fn all_conditions_must_hold_in_the_same_element() {
        let q = SearchQuery::parse(Some("data.a=1&data.b=2")).expect("valid");
        let config: Config = serde_json::from_value(json!({
            "name": "c", "data": [{"a": 1, "b": 3}, {"a": 1, "b": 2}, {"b": 2}]
        }))
        .expect("valid");
        let hits = q.results(vec![config]);
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].data["b"], json!(2));
    }

    #[test]
    fn nested_paths_follow_objects() {
        let q = SearchQuery::parse(Some("data.x.y=ok")).expect("valid");
        let config: Config = serde_json::from_value(json!({
            "name": "c", "data": [{"x": {"y": "ok"}}, {"x": [{"y": "ok"}]}]
        }))
        .expect("valid");
        assert_eq!(q.results(vec![config]).len(), 1);
    }

    #[test]
    fn name_only_returns_every_element_of_that_config() {
        let q = SearchQuery::parse(Some("name=c")).expect("valid");
        let c: Config = serde_json::from_value(json!({"name": "c", "data": [{"a": 1}, {"b": 2}]})).expect("valid");
        let d: Config = serde_json::from_value(json!({"name": "d", "data": [{"a": 1}]})).expect("valid");
        assert_eq!(q.results(vec![c, d]).len(), 2);
    }
}
