//! Paging of `/search`: results are ordered by config name, then by the
//! element's index in that config's `data`; a page holds at most `limit` of
//! them, starts after a cursor, and comes with the exact count of every
//! match.
//!
//! Stores stream their candidates, in name order, into a [`PageCollector`],
//! which counts every match but keeps only the page: the memory a search
//! needs is bounded by the page (plus the one candidate being looked at),
//! never by the number of matches.

use super::{Config, ConfigName, SearchHit, SearchQuery};
use serde::{Serialize, Serializer};
use std::fmt;

/// The position of one result: its config's name and the element's index
/// in that config's `data`. As text (`after=`, `next`) it is opaque to
/// clients: they only hand back what a previous page gave them.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SearchCursor {
    /// The config of the result.
    pub name: ConfigName,
    /// The element's index in the config's `data`.
    pub index: usize,
}

impl SearchCursor {
    /// Parses the text form ([`fmt::Display`]), or says why it is not one.
    pub fn parse(text: &str) -> Result<Self, String> {
        let invalid = || "is not a cursor from a previous page's `next`".to_string();
        let (name, index) = text.rsplit_once('.').ok_or_else(invalid)?;
        if index.is_empty() || !index.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid());
        }
        Ok(Self {
            name: ConfigName::parse(name).map_err(|_| invalid())?,
            index: index.parse().map_err(|_| invalid())?,
        })
    }
}

impl fmt::Display for SearchCursor {
    /// `NAME.INDEX`: names never hold a `.`, so the split is unambiguous.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.name, self.index)
    }
}

impl Serialize for SearchCursor {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Which page of results a search asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchPage {
    /// At most this many results (1 to [`super::ListParams::MAX_LIMIT`]).
    pub limit: usize,
    /// Only results strictly after this position.
    pub after: Option<SearchCursor>,
}

impl Default for SearchPage {
    fn default() -> Self {
        Self {
            limit: super::ListParams::DEFAULT_LIMIT,
            after: None,
        }
    }
}

/// One page of a search: the `/search` response body.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SearchResults {
    /// Every match of the query, on every page.
    pub total: u64,
    /// This page's results, in order.
    pub results: Vec<SearchHit>,
    /// The cursor to pass as `after` for the next page; `None` on the last.
    pub next: Option<SearchCursor>,
}

/// Builds one page from candidates offered in name order (a superset of the
/// configs holding matches; each config offered once). Holds at most
/// `limit` results at any time.
#[derive(Debug)]
pub struct PageCollector<'q> {
    query: &'q SearchQuery,
    total: u64,
    results: Vec<SearchHit>,
    /// The `data` index of the last result kept.
    last_index: usize,
    /// Whether a match was seen beyond the page.
    more: bool,
    /// The last candidate's name (to check the order).
    last: Option<ConfigName>,
}

impl<'q> PageCollector<'q> {
    /// An empty page for `query` (its `page` says which one).
    pub fn new(query: &'q SearchQuery) -> Self {
        Self {
            query,
            total: 0,
            results: Vec::with_capacity(query.page.limit.min(64)),
            last_index: 0,
            more: false,
            last: None,
        }
    }

    /// Looks at one candidate: counts its matches, keeps those on the page.
    /// Candidates must arrive with strictly increasing names.
    pub fn offer(&mut self, config: Config) {
        debug_assert!(
            self.last.as_ref().is_none_or(|last| *last < config.name),
            "candidates out of name order"
        );
        if self.query.name.as_ref().is_some_and(|n| *n != config.name) {
            return;
        }
        let Config { name, data } = config;
        let page = &self.query.page;
        for (index, element) in data.into_iter().enumerate() {
            if !self.query.element_matches(&element) {
                continue;
            }
            self.total += 1;
            let after_cursor = page.after.as_ref().is_none_or(|a| (&name, index) > (&a.name, a.index));
            if !after_cursor {
                continue;
            }
            if self.results.len() < page.limit {
                self.results.push(SearchHit {
                    name: name.clone(),
                    data: element,
                });
                self.last_index = index;
            } else {
                self.more = true;
            }
        }
        self.last = Some(name);
    }

    /// The page, with `next` set when matches remain after it.
    pub fn finish(self) -> SearchResults {
        let next = if self.more {
            self.results.last().map(|hit| SearchCursor {
                name: hit.name.clone(),
                index: self.last_index,
            })
        } else {
            None
        };
        SearchResults {
            total: self.total,
            results: self.results,
            next,
        }
    }
}
