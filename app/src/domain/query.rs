//! Query-string parsing for `/configs` paging and `/search` (with its own
//! paging).
//!
//! Values are percent-decoded only (`+` stays `+`), as docs/API.md says.
//! Unknown or repeated parameters are errors that name the parameter.

use super::{Condition, ConfigName, SearchCursor, SearchPage, SearchQuery};
use percent_encoding::percent_decode_str;

/// A bad query parameter: which one, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryError {
    /// The parameter as written (or `query` for the string as a whole).
    pub param: String,
    /// What is wrong with it.
    pub detail: String,
}

impl QueryError {
    /// A problem with the query parameter `param`.
    pub fn new(param: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            param: param.into(),
            detail: detail.into(),
        }
    }
}

/// Splits a raw query string into decoded `(key, value)` pairs.
pub fn parse_query(raw: Option<&str>) -> Result<Vec<(String, String)>, QueryError> {
    let Some(raw) = raw else { return Ok(Vec::new()) };
    let decode = |s: &str| {
        percent_decode_str(s)
            .decode_utf8()
            .map(|c| c.into_owned())
            .map_err(|_| QueryError::new(s, "is not valid percent-encoded UTF-8"))
    };
    raw.split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            Ok((decode(k)?, decode(v)?))
        })
        .collect()
}

/// `GET /configs` paging: `?limit=` (1..=1000, default 100), `?after=NAME`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListParams {
    /// Page size.
    pub limit: usize,
    /// Exclusive lower bound on names.
    pub after: Option<ConfigName>,
}

impl ListParams {
    /// Default page size.
    pub const DEFAULT_LIMIT: usize = 100;
    /// Largest page size.
    pub const MAX_LIMIT: usize = 1000;

    /// Parses the paging parameters of a raw query string.
    pub fn parse(raw: Option<&str>) -> Result<Self, QueryError> {
        let mut limit = None;
        let mut after = None;
        for (key, value) in parse_query(raw)? {
            match key.as_str() {
                "limit" if limit.is_none() => limit = Some(parse_limit(&value)?),
                "after" if after.is_none() => {
                    after = Some(ConfigName::parse(&value).map_err(|e| QueryError::new("after", e))?);
                }
                "limit" | "after" => return Err(QueryError::new(key, "is given more than once")),
                _ => return Err(QueryError::new(key, "unknown parameter (expected limit or after)")),
            }
        }
        Ok(Self {
            limit: limit.unwrap_or(Self::DEFAULT_LIMIT),
            after,
        })
    }
}

/// A page size: an integer from 1 to [`ListParams::MAX_LIMIT`].
fn parse_limit(value: &str) -> Result<usize, QueryError> {
    let n: usize = value.parse().map_err(|_| {
        QueryError::new(
            "limit",
            format!("must be an integer from 1 to {}", ListParams::MAX_LIMIT),
        )
    })?;
    if !(1..=ListParams::MAX_LIMIT).contains(&n) {
        return Err(QueryError::new(
            "limit",
            format!("must be from 1 to {}", ListParams::MAX_LIMIT),
        ));
    }
    Ok(n)
}

/// Fills `slot` from `parse`, unless the parameter was given already.
fn set_once<T>(
    slot: &mut Option<T>,
    key: &str,
    parse: impl FnOnce() -> Result<T, QueryError>,
) -> Result<(), QueryError> {
    if slot.is_some() {
        return Err(QueryError::new(key, "is given more than once"));
    }
    *slot = Some(parse()?);
    Ok(())
}

/// A `data.KEY[.SUBKEY...]=VALUE` condition not among `existing`.
fn condition(key: &str, value: String, existing: &[Condition]) -> Result<Condition, QueryError> {
    let Some(path) = key.strip_prefix("data.") else {
        return Err(QueryError::new(
            key,
            "unknown parameter (expected name, data.KEY, limit or after)",
        ));
    };
    let path: Vec<String> = path.split('.').map(str::to_string).collect();
    if let Some(why) = path.iter().find_map(|seg| super::document::check_key(seg).err()) {
        return Err(QueryError::new(key, why));
    }
    if existing.iter().any(|c| c.path == path) {
        return Err(QueryError::new(key, "is given more than once"));
    }
    Ok(Condition { path, value })
}

impl SearchQuery {
    /// Parses `/search` parameters: `name` and `data.KEY[.SUBKEY...]` (at
    /// least one of them), and the paging parameters `limit` (1..=1000,
    /// default 100) and `after` (a previous page's `next`); none repeated.
    pub fn parse(raw: Option<&str>) -> Result<Self, QueryError> {
        let (mut name, mut limit, mut after) = (None, None, None);
        let mut conditions: Vec<Condition> = Vec::new();
        for (key, value) in parse_query(raw)? {
            match key.as_str() {
                "name" => set_once(&mut name, &key, || {
                    ConfigName::parse(&value).map_err(|e| QueryError::new("name", e))
                })?,
                "limit" => set_once(&mut limit, &key, || parse_limit(&value))?,
                "after" => set_once(&mut after, &key, || {
                    SearchCursor::parse(&value).map_err(|e| QueryError::new("after", e))
                })?,
                _ => conditions.push(condition(&key, value, &conditions)?),
            }
        }
        if name.is_none() && conditions.is_empty() {
            return Err(QueryError::new(
                "query",
                "give at least one parameter: name or data.KEY",
            ));
        }
        let page = SearchPage {
            limit: limit.unwrap_or(ListParams::DEFAULT_LIMIT),
            after,
        };
        Ok(Self { name, conditions, page })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_percent_decoded_but_plus_is_kept() {
        let pairs = parse_query(Some("a=x%20y&b=1+2&c")).expect("valid");
        assert_eq!(
            pairs,
            [
                ("a".into(), "x y".into()),
                ("b".into(), "1+2".into()),
                ("c".into(), String::new())
            ]
        );
    }

    #[test]
    fn paging_defaults_and_bounds() {
        assert_eq!(ListParams::parse(None).expect("ok").limit, 100);
        assert_eq!(
            ListParams::parse(Some("limit=1000&after=b"))
                .expect("ok")
                .after
                .expect("set")
                .as_str(),
            "b"
        );
        for bad in [
            "limit=0",
            "limit=1001",
            "limit=x",
            "after=a%20b",
            "page=2",
            "limit=1&limit=2",
        ] {
            assert!(ListParams::parse(Some(bad)).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn search_parameters_parse_into_paths() {
        let q = SearchQuery::parse(Some("name=a&data.k=v&data.x.y=1")).expect("ok");
        assert_eq!(q.name.expect("set").as_str(), "a");
        assert_eq!(q.conditions[1].path, ["x", "y"]);
        assert_eq!(q.page, SearchPage::default());
        assert_eq!(q.page.limit, 100);
        let q = SearchQuery::parse(Some("data.k=v&limit=1000&after=b.3")).expect("ok");
        assert_eq!(q.page.limit, 1000);
        assert_eq!(q.page.after.expect("set").to_string(), "b.3");
    }

    #[test]
    fn bad_search_parameters_are_named() {
        for (raw, param) in [
            ("", "query"),
            ("foo=1", "foo"),
            ("data.=1", "data."),
            ("data.$where=1", "data.$where"),
            ("name=a%20b", "name"),
            ("data.k=1&data.k=2", "data.k"),
            ("name=a&name=b", "name"),
            ("limit=5", "query"),
            ("name=a&limit=0", "limit"),
            ("name=a&limit=1001", "limit"),
            ("name=a&limit=x", "limit"),
            ("name=a&limit=1&limit=2", "limit"),
            ("name=a&after=a", "after"),
            ("name=a&after=a.1&after=a.2", "after"),
        ] {
            let err = SearchQuery::parse(Some(raw)).expect_err(raw);
            assert_eq!(err.param, param, "{raw}");
        }
    }
}
