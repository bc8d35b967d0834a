//! Bulk imports: the job record, the envelope `POST /imports` accepts, and
//! how a batch's outcomes are decided (docs/API.md, "Imports").
//!
//! A job is split into batches when it is accepted; the worker decides each
//! batch's outcomes once ([`plan`]), stores that plan, then writes. The
//! counts and item errors come from the stored plan, so a batch written
//! twice (a worker died between writing and recording it) is counted once.

use super::{Config, FieldError};
use serde::{Deserialize, Deserializer as _, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;
use std::collections::HashSet;

/// What an import does with a name that exists already.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// An existing name is an item error (409, like `POST /configs`).
    Create,
    /// An existing name has its data replaced (like `PUT /configs/{name}`).
    Upsert,
}

impl Mode {
    /// Parses the `mode` query parameter.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "create" => Ok(Self::Create),
            "upsert" => Ok(Self::Upsert),
            _ => Err("must be create or upsert".into()),
        }
    }
}

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Stored, waiting for a worker.
    Queued,
    /// A worker holds it (or held it and died; another reclaims it).
    Running,
    /// Every item has an outcome.
    Done,
    /// Given up on (see [`Job::error`]); items written so far stay written.
    Failed,
}

impl JobState {
    /// The lowercase name, as in the API and the metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Done => "done",
            Self::Failed => "failed",
        }
    }

    /// Parses [`JobState::as_str`]'s output.
    pub fn parse(text: &str) -> Option<Self> {
        [Self::Queued, Self::Running, Self::Done, Self::Failed]
            .into_iter()
            .find(|s| s.as_str() == text)
    }

    /// Whether the job can still change.
    pub fn is_finished(self) -> bool {
        matches!(self, Self::Done | Self::Failed)
    }
}

/// Outcome counts of a job (or of one batch).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// New configs written.
    pub created: u64,
    /// Existing configs replaced (upsert).
    pub updated: u64,
    /// Items that break the field rules (422).
    pub invalid: u64,
    /// Names that exist already, or come twice in a create job (409).
    pub conflicts: u64,
}

/// One item's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Written as a new config.
    Created,
    /// Written over an existing config.
    Updated,
    /// Not written: invalid.
    Invalid,
    /// Not written: the name exists (create mode).
    Conflict,
}

impl Counts {
    /// The counts of `outcomes`.
    pub fn of(outcomes: &[Outcome]) -> Self {
        let mut counts = Self::default();
        for outcome in outcomes {
            match outcome {
                Outcome::Created => counts.created += 1,
                Outcome::Updated => counts.updated += 1,
                Outcome::Invalid => counts.invalid += 1,
                Outcome::Conflict => counts.conflicts += 1,
            }
        }
        counts
    }

    /// Items with an outcome.
    pub fn done(&self) -> u64 {
        self.created + self.updated + self.invalid + self.conflicts
    }
}

/// A stored import job. Times are milliseconds since the Unix epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    /// Random id (32 hex digits).
    pub id: String,
    /// Create or upsert.
    pub mode: Mode,
    /// Where it is.
    pub state: JobState,
    /// Items in the job.
    pub total: u64,
    /// Batches the items were split into.
    pub batches: u32,
    /// The first batch not yet recorded (`batches` when all are).
    pub next_batch: u32,
    /// Outcomes so far.
    pub counts: Counts,
    /// When it was accepted.
    pub created_at: u64,
    /// When a worker first took it.
    pub started_at: Option<u64>,
    /// When it became `done` or `failed`.
    pub finished_at: Option<u64>,
    /// The id of the request that created it.
    pub request_id: String,
    /// How many times a worker has taken it.
    pub attempts: u32,
    /// Why it failed.
    pub error: Option<String>,
}

/// One item that was not written, as the single-write problem would say it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemError {
    /// Position in the import, from 0.
    pub index: u64,
    /// The item's name, when it has a usable one.
    pub name: Option<String>,
    /// 422 (invalid) or 409 (conflict).
    pub status: u16,
    /// The problem's detail.
    pub detail: String,
    /// The invalid fields (422 only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

/// The detail of a conflict, the same as `POST /configs`'s 409.
pub const CONFLICT_DETAIL: &str = "a config with this name already exists";

/// How an import body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Envelope {
    /// One JSON array of items.
    Array,
    /// One item per line (blank lines skipped).
    Ndjson,
}

/// Why an import body was refused as a whole (nothing is queued).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// Not the declared framing (400).
    #[error("{0}")]
    Malformed(String),
    /// No items (400).
    #[error("an import needs at least one item")]
    Empty,
    /// More items than one import may hold (413).
    #[error("more than {max} items in one import; split it")]
    TooManyItems {
        /// The bound (`imports.max_items`).
        max: usize,
    },
    /// One item larger than a single write may be (413).
    #[error("item {index} is {size} bytes, more than the {max} bytes a config may be")]
    ItemTooLarge {
        /// Position of the item.
        index: u64,
        /// Its size as sent.
        size: usize,
        /// The bound (`server.max_body`).
        max: usize,
    },
}

/// One batch of an import as accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// The index of its first item in the import.
    pub first: u64,
    /// Its items: a JSON array text.
    pub items: String,
}

/// A body split into batches of at most `batch_size` items.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batches {
    /// Items in all batches.
    pub total: u64,
    /// The batches, in item order.
    pub batches: Vec<Batch>,
}

/// Largest batch text in bytes, whatever `batch_size` says: a MongoDB
/// document or command holds at most 16 MiB, and BSON can take eight times
/// the JSON's size (a `0,` in an array is an element with a type byte, a
/// decimal index key and a number).
pub const MAX_BATCH_BYTES: usize = 1 << 20;

/// Splits an import body into batches. Items are only checked to be JSON
/// (and no larger than `max_item` bytes); the field rules are the worker's,
/// per item. Items are kept as the text sent (borrowed from `body`, never
/// parsed into a tree: a 16 MiB body costs about one more copy of itself).
pub fn split(body: &[u8], envelope: Envelope, limits: SplitLimits) -> Result<Batches, EnvelopeError> {
    let SplitLimits {
        batch_size,
        max_item,
        max_items,
    } = limits;
    let items: Vec<&RawValue> = match envelope {
        Envelope::Array => {
            // Counted while parsing: a body of millions of tiny items is
            // refused before it costs a slice each.
            let mut parser = serde_json::Deserializer::from_slice(body);
            parser
                .deserialize_seq(BoundedItems(max_items))
                .and_then(|items| parser.end().map(|()| items))
                .map_err(|e| {
                    if e.to_string().starts_with(TOO_MANY) {
                        EnvelopeError::TooManyItems { max: max_items }
                    } else {
                        EnvelopeError::Malformed(format!("the body must be a JSON array of configs: {e}"))
                    }
                })?
        }
        Envelope::Ndjson => {
            let text = std::str::from_utf8(body)
                .map_err(|e| EnvelopeError::Malformed(format!("the body is not UTF-8: {e}")))?;
            let mut items = Vec::new();
            for (n, line) in text.lines().enumerate().filter(|(_, line)| !line.trim().is_empty()) {
                if items.len() == max_items {
                    return Err(EnvelopeError::TooManyItems { max: max_items });
                }
                items.push(
                    serde_json::from_str(line.trim())
                        .map_err(|e| EnvelopeError::Malformed(format!("line {} is not JSON: {e}", n + 1)))?,
                );
            }
            items
        }
    };
    if items.is_empty() {
        return Err(EnvelopeError::Empty);
    }
    let mut batches = Vec::new();
    let mut current = String::from("[");
    let mut in_current = 0;
    let mut first = 0;
    for (index, item) in items.iter().enumerate() {
        let text = item.get();
        if text.len() > max_item {
            return Err(EnvelopeError::ItemTooLarge {
                index: index as u64,
                size: text.len(),
                max: max_item,
            });
        }
        if in_current > 0 && (in_current == batch_size || current.len() + text.len() + 2 > MAX_BATCH_BYTES) {
            current.push(']');
            let items = std::mem::replace(&mut current, String::from("["));
            batches.push(Batch { first, items });
            first = index as u64;
            in_current = 0;
        }
        if in_current > 0 {
            current.push(',');
        }
        current.push_str(text);
        in_current += 1;
    }
    current.push(']');
    batches.push(Batch { first, items: current });
    Ok(Batches {
        total: items.len() as u64,
        batches,
    })
}

/// The bounds [`split`] applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SplitLimits {
    /// Items per batch (`imports.batch_size`).
    pub batch_size: usize,
    /// Largest item in bytes (`server.max_body`).
    pub max_item: usize,
    /// Most items in one import (`imports.max_items`).
    pub max_items: usize,
}

const TOO_MANY: &str = "too many items";

/// A JSON array's elements as raw text, at most `.0` of them.
struct BoundedItems(usize);

impl<'de> serde::de::Visitor<'de> for BoundedItems {
    type Value = Vec<&'de RawValue>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON array")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<&'de RawValue>()? {
            if items.len() == self.0 {
                return Err(serde::de::Error::custom(TOO_MANY));
            }
            items.push(item);
        }
        Ok(items)
    }
}

/// Decides the outcome of each item of a batch. `items` are the batch's
/// items validated (`Err` = invalid); `existing` the names among them the
/// store holds now. Within the batch a name's first occurrence decides as
/// usual and later ones see it as existing: a create job reports them as
/// conflicts, an upsert job as updates (the last one's data wins).
pub fn plan(mode: Mode, items: &[Result<Config, Vec<FieldError>>], existing: &HashSet<String>) -> Vec<Outcome> {
    let mut seen: HashSet<&str> = HashSet::new();
    items
        .iter()
        .map(|item| {
            let Ok(config) = item else {
                return Outcome::Invalid;
            };
            let name = config.name.as_str();
            let exists = existing.contains(name) || !seen.insert(name);
            match (mode, exists) {
                (_, false) => Outcome::Created,
                (Mode::Create, true) => Outcome::Conflict,
                (Mode::Upsert, true) => Outcome::Updated,
            }
        })
        .collect()
}

/// Corrects a fresh plan by what its write saw: in create mode `names`
/// are the names the insert found taken (conflicts, not creations); in
/// upsert mode the names the write created (each name's first valid
/// occurrence is created if listed, else updated).
pub fn correct(mode: Mode, items: &[Result<Config, Vec<FieldError>>], outcomes: &mut [Outcome], names: &[String]) {
    let names: HashSet<&str> = names.iter().map(String::as_str).collect();
    let listed = |name: &str| names.contains(name);
    let mut seen: HashSet<&str> = HashSet::new();
    for (item, outcome) in items.iter().zip(outcomes.iter_mut()) {
        let Ok(config) = item else { continue };
        let name = config.name.as_str();
        let first = seen.insert(name);
        match (mode, *outcome) {
            (Mode::Create, Outcome::Created) if listed(name) => *outcome = Outcome::Conflict,
            (Mode::Upsert, Outcome::Created | Outcome::Updated) if first => {
                *outcome = if listed(name) {
                    Outcome::Created
                } else {
                    Outcome::Updated
                };
            }
            _ => {}
        }
    }
}

/// A stored batch's items: each as parsed (`None` when it could not be)
/// and validated.
pub type ParsedBatch = (Vec<Option<Value>>, Vec<Result<Config, Vec<FieldError>>>);

/// Parses a stored batch item by item. The envelope only checked that each
/// item is JSON; one that a single write could not take either (nested
/// deeper than the parser goes, a lone surrogate escape, a number out of
/// range) is an invalid item here, never a failed batch.
pub fn parse_batch(text: &str) -> Result<ParsedBatch, String> {
    let raws: Vec<&RawValue> =
        serde_json::from_str(text).map_err(|e| format!("stored batch is not a JSON array: {e}"))?;
    let mut values = Vec::with_capacity(raws.len());
    let mut items = Vec::with_capacity(raws.len());
    for raw in raws {
        match serde_json::from_str::<Value>(raw.get()) {
            Ok(value) => {
                items.push(super::new_config(value.clone()));
                values.push(Some(value));
            }
            Err(e) => {
                let detail = if e.to_string().starts_with("recursion limit exceeded") {
                    format!("nesting deeper than {} levels", super::MAX_DEPTH)
                } else {
                    format!("not a JSON value a config can hold: {e}")
                };
                items.push(Err(vec![FieldError {
                    pointer: String::new(),
                    detail,
                }]));
                values.push(None);
            }
        }
    }
    Ok((values, items))
}

/// The item errors of a planned batch whose first item is `first_index`.
/// `raw` are the items as sent (for a name when an item is invalid).
pub fn item_errors(
    first_index: u64,
    raw: &[Option<Value>],
    items: &[Result<Config, Vec<FieldError>>],
    outcomes: &[Outcome],
) -> Vec<ItemError> {
    let mut errors = Vec::new();
    for (i, ((item, outcome), raw)) in items.iter().zip(outcomes).zip(raw).enumerate() {
        let index = first_index + i as u64;
        let sent_name = || raw.as_ref()?.get("name").and_then(Value::as_str).map(str::to_string);
        match (outcome, item) {
            (Outcome::Invalid, Err(fields)) => errors.push(ItemError {
                index,
                name: sent_name(),
                status: 422,
                detail: format!(
                    "{} invalid field{}",
                    fields.len(),
                    if fields.len() == 1 { "" } else { "s" }
                ),
                errors: fields.clone(),
            }),
            (Outcome::Conflict, _) => errors.push(ItemError {
                index,
                name: sent_name(),
                status: 409,
                detail: CONFLICT_DETAIL.into(),
                errors: Vec::new(),
            }),
            _ => {}
        }
    }
    errors
}

/// What a planned batch writes: in create mode the new names, in upsert
/// mode every valid name once, with the data of its last occurrence.
pub fn writes(mode: Mode, items: &[Result<Config, Vec<FieldError>>], outcomes: &[Outcome]) -> Vec<Config> {
    let mut chosen: Vec<Config> = Vec::new();
    let mut position: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for (item, outcome) in items.iter().zip(outcomes) {
        let Ok(config) = item else { continue };
        match (mode, outcome) {
            (Mode::Create, Outcome::Created) => chosen.push(config.clone()),
            (Mode::Upsert, Outcome::Created | Outcome::Updated) => match position.get(config.name.as_str()) {
                Some(&at) => chosen[at] = config.clone(),
                None => {
                    position.insert(config.name.as_str().to_string(), chosen.len());
                    chosen.push(config.clone());
                }
            },
            _ => {}
        }
    }
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::new_config;
    use serde_json::json;

    fn limits(batch_size: usize, max_item: usize) -> SplitLimits {
        SplitLimits {
            batch_size,
            max_item,
            max_items: 1000,
        }
    }

    #[test]
    fn more_items_than_an_import_may_hold_are_refused_while_parsing() {
        let tight = SplitLimits {
            batch_size: 10,
            max_item: 99,
            max_items: 3,
        };
        assert!(split(b"[1,2,3]", Envelope::Array, tight).is_ok());
        assert_eq!(
            split(b"[1,2,3,4]", Envelope::Array, tight),
            Err(EnvelopeError::TooManyItems { max: 3 })
        );
        assert_eq!(
            split(b"1\n2\n3\n4\n", Envelope::Ndjson, tight),
            Err(EnvelopeError::TooManyItems { max: 3 })
        );
        assert!(matches!(
            split(b"[1,2] x", Envelope::Array, tight),
            Err(EnvelopeError::Malformed(_))
        ));
    }

    fn validated(raw: &[Value]) -> Vec<Result<Config, Vec<FieldError>>> {
        raw.iter().cloned().map(new_config).collect()
    }

    #[test]
    fn arrays_and_ndjson_split_into_bounded_batches_in_order() {
        let items: Vec<Value> = (0..7).map(|i| json!({"name": format!("n{i}"), "data": []})).collect();
        let array = serde_json::to_vec(&items).expect("json");
        let ndjson: String = items.iter().map(|v| format!("{v}\n\n")).collect();
        for (body, envelope) in [(array, Envelope::Array), (ndjson.into_bytes(), Envelope::Ndjson)] {
            let batches = split(&body, envelope, limits(3, 1024)).expect("valid");
            assert_eq!(batches.total, 7);
            let sizes: Vec<(u64, usize)> = batches
                .batches
                .iter()
                .map(|b| {
                    (
                        b.first,
                        serde_json::from_str::<Vec<Value>>(&b.items).expect("array").len(),
                    )
                })
                .collect();
            assert_eq!(sizes, [(0, 3), (3, 3), (6, 1)]);
            let again: Vec<Value> = batches
                .batches
                .iter()
                .flat_map(|b| serde_json::from_str::<Vec<Value>>(&b.items).expect("array"))
                .collect();
            assert_eq!(again, items);
        }
    }

    #[test]
    fn bad_envelopes_are_refused_whole() {
        assert!(matches!(
            split(b"{\"name\":1}", Envelope::Array, limits(10, 99)),
            Err(EnvelopeError::Malformed(_))
        ));
        assert!(matches!(
            split(b"[1,", Envelope::Array, limits(10, 99)),
            Err(EnvelopeError::Malformed(_))
        ));
        assert_eq!(split(b"[]", Envelope::Array, limits(10, 99)), Err(EnvelopeError::Empty));
        assert_eq!(
            split(b"\n \n", Envelope::Ndjson, limits(10, 99)),
            Err(EnvelopeError::Empty)
        );
        let Err(EnvelopeError::Malformed(why)) = split(b"{}\n{oops\n", Envelope::Ndjson, limits(10, 99)) else {
            panic!("a bad line is malformed");
        };
        assert!(why.contains("line 2"), "{why}");
        let big = format!("[{{\"name\":\"a\",\"data\":[{{\"k\":\"{}\"}}]}}]", "x".repeat(200));
        assert!(matches!(
            split(big.as_bytes(), Envelope::Array, limits(10, 100)),
            Err(EnvelopeError::ItemTooLarge { index: 0, .. })
        ));
    }

    #[test]
    fn items_only_the_envelope_accepted_are_invalid_items_not_a_failed_batch() {
        let deep = format!(
            "{{\"name\":\"deep\",\"data\":[{}1{}]}}",
            "[".repeat(130),
            "]".repeat(130)
        );
        let body = format!("[{{\"name\":\"ok\",\"data\":[]}},{deep},\"\\ud800\",1e400]");
        let batches = split(body.as_bytes(), Envelope::Array, limits(10, 1 << 20)).expect("the envelope is JSON");
        let (values, items) = parse_batch(&batches.batches[0].items).expect("parses");
        assert_eq!(items.len(), 4);
        assert!(items[0].is_ok());
        let details: Vec<String> = items[1..]
            .iter()
            .map(|i| i.as_ref().expect_err("invalid")[0].detail.clone())
            .collect();
        assert!(details[0].contains("nesting deeper"), "{details:?}");
        assert!(values[1].is_none() && values[0].is_some());
        let outcomes = plan(Mode::Create, &items, &HashSet::new());
        assert_eq!(Counts::of(&outcomes).invalid, 3);
        assert_eq!(item_errors(0, &values, &items, &outcomes).len(), 3);
    }

    #[test]
    fn plans_count_invalid_items_conflicts_and_duplicates() {
        let raw = vec![
            json!({"name": "a", "data": []}),
            json!({"name": "b", "data": []}),
            json!({"name": "a", "data": [{"k": 2}]}),
            json!({"name": "", "data": []}),
            json!(7),
        ];
        let items = validated(&raw);
        let existing: HashSet<String> = ["b".to_string()].into();
        let create = plan(Mode::Create, &items, &existing);
        use Outcome::*;
        assert_eq!(create, [Created, Conflict, Conflict, Invalid, Invalid]);
        assert_eq!(
            Counts::of(&create),
            Counts {
                created: 1,
                updated: 0,
                invalid: 2,
                conflicts: 2
            }
        );
        let sent: Vec<Option<Value>> = raw.iter().cloned().map(Some).collect();
        let errors = item_errors(10, &sent, &items, &create);
        let summary: Vec<(u64, Option<&str>, u16)> =
            errors.iter().map(|e| (e.index, e.name.as_deref(), e.status)).collect();
        assert_eq!(
            summary,
            [
                (11, Some("b"), 409),
                (12, Some("a"), 409),
                (13, Some(""), 422),
                (14, None, 422)
            ]
        );
        assert_eq!(writes(Mode::Create, &items, &create).len(), 1);
        let upsert = plan(Mode::Upsert, &items, &existing);
        assert_eq!(upsert, [Created, Updated, Updated, Invalid, Invalid]);
        let written = writes(Mode::Upsert, &items, &upsert);
        let names: Vec<&str> = written.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(written[0].data.len(), 1, "the last occurrence's data wins");
        // A write that saw otherwise corrects a fresh plan.
        let mut raced = create.clone();
        correct(Mode::Create, &items, &mut raced, &["a".to_string()]);
        assert_eq!(raced, [Conflict, Conflict, Conflict, Invalid, Invalid]);
        let mut raced = upsert.clone();
        correct(Mode::Upsert, &items, &mut raced, &[]);
        assert_eq!(
            raced,
            [Updated, Updated, Updated, Invalid, Invalid],
            "a existed by the write"
        );
        let mut raced = upsert;
        correct(Mode::Upsert, &items, &mut raced, &["a".to_string(), "b".to_string()]);
        assert_eq!(raced, [Created, Created, Updated, Invalid, Invalid]);
    }
}
