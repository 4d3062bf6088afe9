//! Instants as milliseconds since the Unix epoch, and their RFC 3339 text.
//!
//! The core never reads the clock; the server passes "now" in.

use chrono::{DateTime, SecondsFormat, Utc};

/// An instant, in milliseconds since 1970-01-01T00:00:00Z.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// The latest representable instant; used as "never" for open intervals.
    pub const MAX: Timestamp = Timestamp(i64::MAX);
    /// The earliest representable instant; used as "always" for open intervals.
    pub const MIN: Timestamp = Timestamp(i64::MIN);

    /// Milliseconds since the epoch.
    pub fn millis(self) -> i64 {
        self.0
    }

    /// This instant plus `millis` milliseconds, saturating at the ends.
    pub fn plus_millis(self, millis: i64) -> Timestamp {
        Timestamp(self.0.saturating_add(millis))
    }

    /// Parses RFC 3339 text such as `2021-07-14T21:30:00+02:00`.
    ///
    /// ```
    /// use beeld_layers::Timestamp;
    /// let t = Timestamp::parse_rfc3339("2021-07-14T19:30:00Z").unwrap();
    /// assert_eq!(t.to_rfc3339(), "2021-07-14T19:30:00.000Z");
    /// assert!(Timestamp::parse_rfc3339("14-07-2021").is_none());
    /// ```
    pub fn parse_rfc3339(text: &str) -> Option<Timestamp> {
        DateTime::parse_from_rfc3339(text)
            .ok()
            .map(|t| Timestamp(t.timestamp_millis()))
    }

    /// RFC 3339 text in UTC with milliseconds.
    pub fn to_rfc3339(self) -> String {
        match DateTime::<Utc>::from_timestamp_millis(self.0) {
            Some(t) => t.to_rfc3339_opts(SecondsFormat::Millis, true),
            None if self.0 > 0 => "9999-12-31T23:59:59.999Z".to_owned(),
            None => "0000-01-01T00:00:00.000Z".to_owned(),
        }
    }
}
