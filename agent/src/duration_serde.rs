//! Durations in configuration text, written the human way: `"1s"`, `"500ms"`, `"10m"`.
//!
//! The one serde definition for them: `#[serde(with = "crate::duration_serde")]` on a
//! [`Duration`] field, or the [`crate::config::HumanDuration`] newtype. A module of its own so
//! that the configuration and the sections it embeds (alert sinks) can both use it without
//! depending on each other.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serializer, de::Error};

/// The longest any duration in the file may be (a year): beyond that is a typo.
pub const MAX_DURATION: Duration = Duration::from_hours(366 * 24);

/// Writes `d` as humantime text (`"1m 30s"`).
///
/// # Errors
/// Those of the serializer.
pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_duration(*d))
}

/// Reads humantime text, at most [`MAX_DURATION`].
///
/// # Errors
/// Not a string, not a duration, or longer than [`MAX_DURATION`].
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    let d = humantime::parse_duration(&text)
        .map_err(|e| D::Error::custom(format!("invalid duration {text:?} ({e}); write e.g. \"1s\", \"10m\"")))?;
    if d > MAX_DURATION {
        return Err(D::Error::custom(format!(
            "duration {text:?} is longer than {}",
            humantime::format_duration(MAX_DURATION)
        )));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct T {
        #[serde(with = "super")]
        d: Duration,
    }

    #[test]
    fn round_trip_and_bounds() {
        let t: T = serde_json::from_str(r#"{"d":"1m 30s"}"#).unwrap();
        assert_eq!(t.d, Duration::from_secs(90));
        assert_eq!(serde_json::to_string(&t).unwrap(), r#"{"d":"1m 30s"}"#);
        let bad = serde_json::from_str::<T>(r#"{"d":"soon"}"#).unwrap_err().to_string();
        assert!(bad.contains("invalid duration \"soon\""), "{bad}");
        let long = serde_json::from_str::<T>(r#"{"d":"400days"}"#).unwrap_err().to_string();
        assert!(long.contains("longer than"), "{long}");
    }
}
