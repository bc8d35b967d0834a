//! Validated domain types. Everything that crosses the HTTP boundary is
//! parsed into these types first; stores and caches only ever see valid data.

mod document;
pub mod import;
mod name;
mod query;
mod search;
mod search_page;

pub use document::{Config, DataElement, FieldError, MAX_DEPTH, merge_patch, new_config, replacement};
pub use name::ConfigName;
pub use query::{ListParams, QueryError, parse_query};
pub use search::{Condition, SearchHit, SearchQuery};
pub use search_page::{PageCollector, SearchCursor, SearchPage, SearchResults};
