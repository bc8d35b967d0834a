//! Search semantics, shared by every store: the store narrows candidates,
//! this module decides exactly which elements match (and `search_page`
//! which of them a page holds), so both backends give identical answers.

use super::{ConfigName, DataElement, SearchPage};
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
    /// Which page of the results (`limit`, `after`).
    pub page: SearchPage,
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

/// docs/API.md's typed matching: a string equal to the text; a number equal to
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Config, PageCollector, SearchCursor, SearchResults};
    use serde_json::json;

    fn run(query: &str, candidates: Vec<Config>) -> SearchResults {
        let query = SearchQuery::parse(Some(query)).expect("valid");
        let mut page = PageCollector::new(&query);
        candidates.into_iter().for_each(|c| page.offer(c));
        page.finish()
    }

    fn config(value: serde_json::Value) -> Config {
        serde_json::from_value(value).expect("valid")
    }

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
        let c = config(json!({ "name": "c", "data": [{"a": 1, "b": 3}, {"a": 1, "b": 2}, {"b": 2}] }));
        let found = run("data.a=1&data.b=2", vec![c]);
        assert_eq!((found.total, found.results.len()), (1, 1));
        assert_eq!(found.results[0].data["b"], json!(2));
    }

    #[test]
    fn nested_paths_follow_objects() {
        let c = config(json!({ "name": "c", "data": [{"x": {"y": "ok"}}, {"x": [{"y": "ok"}]}] }));
        assert_eq!(run("data.x.y=ok", vec![c]).total, 1);
    }

    #[test]
    fn name_only_returns_every_element_of_that_config() {
        let c = config(json!({"name": "c", "data": [{"a": 1}, {"b": 2}]}));
        let d = config(json!({"name": "d", "data": [{"a": 1}]}));
        assert_eq!(run("name=c", vec![c, d]).results.len(), 2);
    }

    #[test]
    fn pages_follow_name_then_index_and_count_every_match() {
        let candidates = || {
            vec![
                config(json!({"name": "a", "data": [{"k": 1}, {"k": 2}, {"k": 1}]})),
                config(json!({"name": "b", "data": [{"k": 1}]})),
                config(json!({"name": "c", "data": [{"k": 1}, {"k": 1}]})),
            ]
        };
        let positions = |r: &SearchResults| -> Vec<String> { r.results.iter().map(|h| h.name.to_string()).collect() };
        let first = run("data.k=1&limit=2", candidates());
        assert_eq!((first.total, positions(&first)), (5, vec!["a".into(), "a".into()]));
        let next = first.next.expect("more pages").to_string();
        assert_eq!(next, "a.2", "the last result is element 2 of a");
        let second = run(&format!("data.k=1&limit=2&after={next}"), candidates());
        assert_eq!((second.total, positions(&second)), (5, vec!["b".into(), "c".into()]));
        let next = second.next.expect("more pages").to_string();
        assert_eq!(next, "c.0");
        let last = run(&format!("data.k=1&limit=2&after={next}"), candidates());
        assert_eq!((last.total, positions(&last), last.next), (5, vec!["c".into()], None));
        let exact = run("data.k=1&limit=5", candidates());
        assert_eq!((exact.results.len(), exact.next), (5, None), "no empty last page");
    }

    #[test]
    fn cursors_round_trip_and_reject_anything_else() {
        let cursor = SearchCursor::parse("some-name_1.17").expect("valid");
        assert_eq!((cursor.name.as_str(), cursor.index), ("some-name_1", 17));
        assert_eq!(cursor.to_string(), "some-name_1.17");
        for bad in [
            "",
            "a",
            "a.",
            ".1",
            "a.b",
            "a.+1",
            "a.-1",
            "a b.1",
            "a.1.2",
            "a.99999999999999999999999",
        ] {
            assert!(SearchCursor::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
