//! How configuration writes its units, for `serde`: sizes as `"64KiB"` or
//! a plain number of bytes, durations as `"500ms"`, `"20s"`, `"5m"`. Every
//! crate's configuration uses these, so a size or a duration is written the
//! same way in every section.

/// A size in bytes, written `"64KiB"`, `"1MiB"` or as a number.
pub mod size {
    use serde::de::Error;
    use serde::Deserializer;

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<usize, D::Error> {
        let size: bytesize::ByteSize = serde::Deserialize::deserialize(deserializer)?;
        usize::try_from(size.as_u64()).map_err(|_| D::Error::custom(format!("{size} is too large")))
    }
}

/// A duration, written `"500ms"`, `"20s"`, `"5m"`.
pub mod duration {
    pub use humantime_serde::deserialize;
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    struct Units {
        #[serde(deserialize_with = "super::size::deserialize")]
        size: usize,
        #[serde(with = "super::duration")]
        duration: Duration,
    }

    #[test]
    fn sizes_and_durations_read_as_written() {
        let cases = [
            (
                r#"{"size":"64KiB","duration":"20s"}"#,
                65_536,
                Duration::from_secs(20),
            ),
            (
                r#"{"size":1000,"duration":"500ms"}"#,
                1000,
                Duration::from_millis(500),
            ),
        ];
        for (text, size, duration) in cases {
            assert_eq!(
                serde_json::from_str::<Units>(text).unwrap(),
                Units { size, duration },
                "{text}"
            );
        }
        assert!(serde_json::from_str::<Units>(r#"{"size":"lots","duration":"1s"}"#).is_err());
        assert!(serde_json::from_str::<Units>(r#"{"size":1,"duration":"soon"}"#).is_err());
    }
}
