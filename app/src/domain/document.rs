//! Config documents and the validation rules of docs/API.md.
//!
//! Keys inside `data` become MongoDB field paths, so the key rules here are
//! an injection boundary: non-empty, no leading `$`, no `.`, no NUL.

use super::ConfigName;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Deepest allowed nesting, counted from the `data` array (level 1).
pub const MAX_DEPTH: usize = 32;

/// One element of a config's `data` array.
pub type DataElement = Map<String, Value>;

/// A stored config: a valid name and valid data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    /// Unique name.
    pub name: ConfigName,
    /// Elements, each a JSON object.
    pub data: Vec<DataElement>,
}

/// One invalid field: a JSON pointer into the request body and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldError {
    /// RFC 6901 pointer into the request body, e.g. `/data/0/$where`.
    pub pointer: String,
    /// What is wrong.
    pub detail: String,
}

impl FieldError {
    fn new(pointer: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            pointer: pointer.into(),
            detail: detail.into(),
        }
    }
}

/// A POST body: `{"name": NAME, "data": [OBJECT, ...]}` and nothing else.
pub fn new_config(body: Value) -> Result<Config, Vec<FieldError>> {
    let mut errors = Vec::new();
    let Value::Object(mut doc) = body else {
        return Err(vec![FieldError::new("", "the body must be a JSON object")]);
    };
    let name = match doc.remove("name") {
        Some(Value::String(s)) => ConfigName::parse(&s)
            .map_err(|e| errors.push(FieldError::new("/name", format!("name {e}"))))
            .ok(),
        Some(_) => {
            errors.push(FieldError::new("/name", "name must be a string"));
            None
        }
        None => {
            errors.push(FieldError::new("/name", "name is required"));
            None
        }
    };
    let data = take_data(&mut doc, &mut errors);
    unknown_fields(&doc, &mut errors);
    match (name, data) {
        (Some(name), Some(data)) if errors.is_empty() => Ok(Config { name, data }),
        _ => Err(errors),
    }
}

/// A PUT body: `{"data": [...]}`, with an optional `name` equal to the path's.
pub fn replacement(name: &ConfigName, body: Value) -> Result<Config, Vec<FieldError>> {
    let mut errors = Vec::new();
    let Value::Object(mut doc) = body else {
        return Err(vec![FieldError::new("", "the body must be a JSON object")]);
    };
    match doc.remove("name") {
        None => {}
        Some(Value::String(s)) if s == name.as_str() => {}
        Some(_) => errors.push(FieldError::new(
            "/name",
            format!(
                "name must be absent or equal to the path's name {name:?}",
                name = name.as_str()
            ),
        )),
    }
    let data = take_data(&mut doc, &mut errors);
    unknown_fields(&doc, &mut errors);
    match data {
        Some(data) if errors.is_empty() => Ok(Config {
            name: name.clone(),
            data,
        }),
        _ => Err(errors),
    }
}

/// Applies a JSON Merge Patch (RFC 7396) to `current` and validates the
/// result like a POST body. The name cannot change.
pub fn merge_patch(current: &Config, patch: &Value) -> Result<Config, Vec<FieldError>> {
    let mut doc = serde_json::to_value(current).map_err(|e| vec![FieldError::new("", e.to_string())])?;
    json_patch::merge(&mut doc, patch);
    if doc.get("name").and_then(Value::as_str) != Some(current.name.as_str()) {
        return Err(vec![FieldError::new("/name", "name cannot change")]);
    }
    new_config(doc)
}

fn take_data(doc: &mut Map<String, Value>, errors: &mut Vec<FieldError>) -> Option<Vec<DataElement>> {
    match doc.remove("data") {
        Some(Value::Array(items)) => {
            let mut elements = Vec::with_capacity(items.len());
            for (i, item) in items.into_iter().enumerate() {
                let pointer = format!("/data/{i}");
                match item {
                    Value::Object(obj) => {
                        check_object(&obj, &pointer, 2, errors);
                        elements.push(obj);
                    }
                    _ => errors.push(FieldError::new(pointer, "each element of data must be an object")),
                }
            }
            Some(elements)
        }
        Some(_) => {
            errors.push(FieldError::new("/data", "data must be an array of objects"));
            None
        }
        None => {
            errors.push(FieldError::new("/data", "data is required"));
            None
        }
    }
}

fn unknown_fields(doc: &Map<String, Value>, errors: &mut Vec<FieldError>) {
    for key in doc.keys() {
        errors.push(FieldError::new(
            format!("/{}", escape_pointer(key)),
            format!("unknown field {key:?}: a config has only name and data"),
        ));
    }
}

/// Checks the keys and depth of an object at nesting `level`.
fn check_object(obj: &DataElement, pointer: &str, level: usize, errors: &mut Vec<FieldError>) {
    if level > MAX_DEPTH {
        errors.push(FieldError::new(
            pointer,
            format!("nesting deeper than {MAX_DEPTH} levels"),
        ));
        return;
    }
    for (key, value) in obj {
        let here = format!("{pointer}/{}", escape_pointer(key));
        if let Err(why) = check_key(key) {
            errors.push(FieldError::new(here.clone(), why));
        }
        check_value(value, &here, level + 1, errors);
    }
}

fn check_value(value: &Value, pointer: &str, level: usize, errors: &mut Vec<FieldError>) {
    match value {
        Value::Object(obj) => check_object(obj, pointer, level, errors),
        Value::Array(items) => {
            if level > MAX_DEPTH {
                errors.push(FieldError::new(
                    pointer,
                    format!("nesting deeper than {MAX_DEPTH} levels"),
                ));
                return;
            }
            for (i, item) in items.iter().enumerate() {
                check_value(item, &format!("{pointer}/{i}"), level + 1, errors);
            }
        }
        Value::Number(n) if n.is_u64() && n.as_i64().is_none() => errors.push(FieldError::new(
            pointer,
            "integer out of range (the store keeps signed 64-bit integers)",
        )),
        _ => {}
    }
}

/// The key rules of docs/API.md; also used for `data.KEY` search parameters.
pub(crate) fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        Err("keys must not be empty".into())
    } else if key.starts_with('$') {
        Err(format!("key {key:?} must not start with '$'"))
    } else if key.contains('.') {
        Err(format!("key {key:?} must not contain '.'"))
    } else if key.contains('\0') {
        Err(format!("key {key:?} must not contain NUL"))
    } else {
        Ok(())
    }
}

fn escape_pointer(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn nested(depth: usize) -> Value {
        // An element at level 2 holding `depth - 2` further levels of objects.
        let mut v = json!(1);
        for _ in 2..depth {
            v = json!({ "k": v });
        }
        json!({ "name": "deep", "data": [ { "k": v } ] })
    }

    #[test]
    fn a_valid_body_keeps_json_types() {
        let c = new_config(json!({"name": "a", "data": [{"n": 1412, "t": true, "s": "x", "z": null, "f": 1.5}]}))
            .expect("valid");
        assert_eq!(c.data[0]["n"], json!(1412));
        assert_eq!(c.data[0]["t"], json!(true));
        assert_eq!(c.data[0]["f"], json!(1.5));
    }

    #[test]
    fn an_empty_data_array_is_valid() {
        assert!(new_config(json!({"name": "a", "data": []})).is_ok());
    }

    #[test]
    fn injection_keys_are_refused_wherever_they_are() {
        for key in ["$where", "a.b", "", "a\0b"] {
            let body = json!({"name": "a", "data": [{"ok": {"inner": [{ key: 1 }]}}]});
            let errs = new_config(body).expect_err("refused");
            assert_eq!(errs.len(), 1, "{key:?}: {errs:?}");
            assert!(errs[0].pointer.starts_with("/data/0/ok/inner/0/"), "{errs:?}");
        }
    }

    #[test]
    fn every_field_error_is_reported() {
        let errs = new_config(json!({"name": "bad name", "data": [1, {"$x": 1}], "extra": 1})).expect_err("refused");
        let pointers: Vec<&str> = errs.iter().map(|e| e.pointer.as_str()).collect();
        assert_eq!(pointers, ["/name", "/data/0", "/data/1/$x", "/extra"]);
    }

    #[test]
    fn missing_or_mistyped_fields_are_refused() {
        assert!(new_config(json!({"data": []})).is_err());
        assert!(new_config(json!({"name": "a"})).is_err());
        assert!(new_config(json!({"name": "a", "data": {}})).is_err());
        assert!(new_config(json!({"name": 5, "data": []})).is_err());
        assert!(new_config(json!([])).is_err());
    }

    #[test]
    fn nesting_is_allowed_up_to_the_limit_and_refused_beyond() {
        assert!(new_config(nested(MAX_DEPTH)).is_ok());
        let errs = new_config(nested(MAX_DEPTH + 1)).expect_err("too deep");
        assert!(errs[0].detail.contains("nesting"), "{errs:?}");
    }

    #[test]
    fn integers_beyond_i64_are_refused() {
        assert!(new_config(json!({"name": "a", "data": [{"n": u64::MAX}]})).is_err());
        assert!(new_config(json!({"name": "a", "data": [{"n": i64::MIN}]})).is_ok());
    }

    #[test]
    fn a_replacement_may_repeat_the_name_but_not_change_it() {
        let name = ConfigName::parse("a").expect("valid");
        assert!(replacement(&name, json!({"data": []})).is_ok());
        assert!(replacement(&name, json!({"name": "a", "data": []})).is_ok());
        assert!(replacement(&name, json!({"name": "b", "data": []})).is_err());
    }

    #[test]
    fn a_merge_patch_replaces_data_and_keeps_the_name() {
        let cur = new_config(json!({"name": "a", "data": [{"x": 1}]})).expect("valid");
        let out = merge_patch(&cur, &json!({"data": [{"y": 2}]})).expect("valid");
        assert_eq!(out.data, vec![json!({"y": 2}).as_object().expect("obj").clone()]);
        assert!(merge_patch(&cur, &json!({"name": "b"})).is_err());
        assert!(merge_patch(&cur, &json!({"name": null})).is_err());
        assert!(merge_patch(&cur, &json!({"data": [{"$bad": 1}]})).is_err());
        assert!(merge_patch(&cur, &json!({"other": 1})).is_err());
        assert_eq!(merge_patch(&cur, &json!({})).expect("no-op"), cur);
    }
}
