//! Request rates such as `"20r/s"` or `"600r/m"`: parsed from and written
//! as that text (a count of at least 1, per second or per minute).

use serde::{Deserialize, Serialize};

/// The unit of a rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateUnit {
    /// `r/s`
    Second,
    /// `r/m`
    Minute,
}

/// A rate such as `"20r/s"` or `"600r/m"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Requests per unit.
    pub count: u32,
    /// The unit.
    pub per: RateUnit,
}

impl Rate {
    /// Requests per second.
    pub fn per_second(&self) -> f64 {
        f64::from(self.count) / self.window_secs() as f64
    }

    /// The unit in seconds (the `w` of the RateLimit-Policy field).
    pub fn window_secs(&self) -> u64 {
        match self.per {
            RateUnit::Second => 1,
            RateUnit::Minute => 60,
        }
    }
}

impl std::str::FromStr for Rate {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a rate like \"20r/s\" or \"600r/m\"");
        let (count, unit) = s.split_once("r/").ok_or_else(bad)?;
        let count: u32 = count.trim().parse().map_err(|_| bad())?;
        let per = match unit.trim() {
            "s" => RateUnit::Second,
            "m" => RateUnit::Minute,
            _ => return Err(bad()),
        };
        if count == 0 {
            return Err(format!("{s:?}: the rate must be at least 1"));
        }
        Ok(Self { count, per })
    }
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let unit = match self.per {
            RateUnit::Second => "s",
            RateUnit::Minute => "m",
        };
        write!(f, "{}r/{unit}", self.count)
    }
}

impl Serialize for Rate {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_read_as_nginx_writes_them_and_written_back_the_same() {
        for (text, per_second) in [("20r/s", 20.0), ("600r/m", 10.0), (" 5r/ s", 5.0)] {
            let rate: Rate = text.parse().expect(text);
            assert!((rate.per_second() - per_second).abs() < 1e-9, "{text}");
            assert_eq!(rate.to_string().parse::<Rate>(), Ok(rate));
        }
        assert_eq!("600r/m".parse::<Rate>().map(|r| r.window_secs()), Ok(60));
    }

    #[test]
    fn anything_else_is_refused_with_the_text_it_was() {
        for text in ["20", "20r/h", "r/s", "-1r/s", "0r/s", "20 requests/s"] {
            let error = text.parse::<Rate>().expect_err(text);
            assert!(error.contains(&format!("{text:?}")), "{error}");
        }
    }
}
