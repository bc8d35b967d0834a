//! Config names.

use serde::{Deserialize, Deserializer, Serialize};
use std::fmt;

/// A config's name: 1 to 128 characters from `A-Z a-z 0-9 _ -`.
/// Holding one proves the text is valid (it also makes it safe in URLs,
/// cache keys and store queries without escaping).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct ConfigName(String);

impl ConfigName {
    /// Longest allowed name.
    pub const MAX_LEN: usize = 128;

    /// Parses a name, or says why it is not one.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Err("must not be empty".into());
        }
        if text.len() > Self::MAX_LEN {
            return Err(format!("must be at most {} characters", Self::MAX_LEN));
        }
        if let Some(bad) = text
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
        {
            return Err(format!("must use only A-Z a-z 0-9 _ - (found {bad:?})"));
        }
        Ok(Self(text.to_string()))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ConfigName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ConfigName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_names_parse() {
        for ok in ["a", "Mckinney", "app_1-prod", &"x".repeat(128)] {
            assert_eq!(ConfigName::parse(ok).expect("valid").as_str(), ok);
        }
    }

    #[test]
    fn invalid_names_are_refused() {
        for bad in ["", "a b", "a.b", "a/b", "é", "$x", &"x".repeat(129), "a\0"] {
            assert!(ConfigName::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
