//! Time as Postgres keeps it. `timestamptz` holds microseconds, so a time that is written and
//! read back, or hashed before it is written (the vault's audit chain), is truncated to
//! microseconds first: what a server holds in memory is then exactly what the database holds.

use time::OffsetDateTime;

/// Now, in UTC, truncated to microseconds.
pub fn now_micros() -> OffsetDateTime {
    truncate_to_micros(OffsetDateTime::now_utc())
}

/// `time` truncated to microseconds.
pub fn truncate_to_micros(time: OffsetDateTime) -> OffsetDateTime {
    let nanos = time.nanosecond();
    time.replace_nanosecond(nanos - nanos % 1_000)
        .expect("a nanosecond rounded down stays in range")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Truncation drops the nanoseconds below a microsecond and nothing else.
    #[test]
    fn truncates_to_microseconds() {
        let time = time::macros::datetime!(2026-12-06 13:00:00.123_456_789 UTC);
        assert_eq!(
            truncate_to_micros(time),
            time::macros::datetime!(2026-12-06 13:00:00.123_456 UTC)
        );
        assert_eq!(now_micros().nanosecond() % 1_000, 0);
    }
}
