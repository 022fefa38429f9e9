//! When a schedule fires: a cron expression (with seconds, or the five standard fields, or a
//! shorthand) in a time zone, or `@every DURATION`.
//!
//! Daylight saving time is handled as Vixie cron does, which is what cron users expect:
//! - a schedule at fixed hours (`0 30 2 * * *`) follows the wall clock: a time the clock skips
//!   (02:30 on the night clocks go forward) fires right after the change, at 03:00; a time the
//!   clock repeats (02:30 on the night they go back) fires once, the first time;
//! - a schedule that fires every hour (`0 */5 * * * *`, `@hourly`) follows the passing of time:
//!   it fires through a skipped hour as through any other, and in both passes of a repeated one.
//!
//! `@every 30s` counts from the Unix epoch, so every replica computes the same ticks.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, LocalResult, NaiveDateTime, TimeZone, Timelike as _, Utc};
use chrono_tz::Tz;

/// A parsed schedule.
#[derive(Debug, Clone)]
pub struct When {
    kind: Kind,
    tz: Tz,
}

#[derive(Debug, Clone)]
enum Kind {
    /// A cron schedule; `wall_clock` when its hours are fixed.
    Cron {
        schedule: Box<cron::Schedule>,
        wall_clock: bool,
    },
    /// `@every`: multiples of this since the epoch.
    Every(Duration),
}

/// The shorthands, as six-field expressions.
const SHORTHANDS: [(&str, &str); 7] = [
    ("@yearly", "0 0 0 1 1 *"),
    ("@annually", "0 0 0 1 1 *"),
    ("@monthly", "0 0 0 1 * *"),
    ("@weekly", "0 0 0 * * Sun"),
    ("@daily", "0 0 0 * * *"),
    ("@midnight", "0 0 0 * * *"),
    ("@hourly", "0 0 * * * *"),
];

impl When {
    /// Parses `expression` in the time zone `timezone` (an IANA name; `UTC` when absent).
    pub fn parse(expression: &str, timezone: Option<&str>) -> Result<Self, String> {
        let tz: Tz = match timezone {
            None => Tz::UTC,
            Some(name) => name.parse().map_err(|_| {
                format!("`{name}` is not an IANA time zone (write `Europe/Berlin`, `UTC`)")
            })?,
        };
        let expression = expression.trim();
        if let Some(every) = expression.strip_prefix("@every") {
            let every = every.trim();
            let period = humantime::parse_duration(every)
                .map_err(|e| format!("`@every {every}`: {e} (write `@every 30s`, `@every 5m`)"))?;
            if period < Duration::from_secs(1) {
                return Err(format!("`@every {every}`: at least one second"));
            }
            return Ok(Self {
                kind: Kind::Every(period),
                tz,
            });
        }
        let six = match SHORTHANDS
            .iter()
            .find(|(s, _)| expression.eq_ignore_ascii_case(s))
        {
            Some((_, six)) => (*six).to_string(),
            None if expression.starts_with('@') => {
                return Err(format!(
                    "`{expression}` is no shorthand (`@yearly`, `@monthly`, `@weekly`, `@daily`, `@hourly`, `@every 30s`)"
                ));
            }
            None => match expression.split_whitespace().count() {
                5 => format!("0 {expression}"),
                6 | 7 => expression.to_string(),
                n => {
                    return Err(format!(
                        "`{expression}` has {n} fields: write five (minute hour day month weekday) or six, seconds first"
                    ));
                }
            },
        };
        let schedule = cron::Schedule::from_str(&six)
            .map_err(|e| format!("`{expression}` is not a cron expression: {e}"))?;
        let hours = six.split_whitespace().nth(2).unwrap_or("*");
        Ok(Self {
            kind: Kind::Cron {
                schedule: Box::new(schedule),
                wall_clock: !matches!(hours, "*" | "*/1"),
            },
            tz,
        })
    }

    /// The first time it fires strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match &self.kind {
            Kind::Every(period) => {
                let period = i64::try_from(period.as_millis()).ok()?;
                let now = after.timestamp_millis();
                let next = (now.div_euclid(period) + 1).checked_mul(period)?;
                DateTime::from_timestamp_millis(next)
            }
            Kind::Cron {
                schedule,
                wall_clock: false,
            } => self.next_in_time(schedule, after),
            Kind::Cron {
                schedule,
                wall_clock: true,
            } => self.next_on_the_wall_clock(schedule, after),
        }
    }

    /// The fire times in `(from, to]`, at most `max`.
    pub fn between(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        max: usize,
    ) -> Vec<DateTime<Utc>> {
        let mut out = Vec::new();
        let mut at = from;
        while out.len() < max {
            match self.next_after(at) {
                Some(next) if next <= to => {
                    out.push(next);
                    at = next;
                }
                _ => break,
            }
        }
        out
    }

    /// Every hour: each instant whose wall-clock time matches, in the order they happen (both
    /// passes of a repeated hour; nothing in a skipped one). Wall-clock candidates are taken
    /// from two hours before `after`'s wall clock to two hours after the first match, the most
    /// a clock change moves them.
    fn next_in_time(
        &self,
        schedule: &cron::Schedule,
        after: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        let reach = chrono::Duration::hours(2);
        let start = after.with_timezone(&self.tz).naive_local() - reach;
        let mut best: Option<(DateTime<Utc>, NaiveDateTime)> = None;
        for candidate in schedule
            .after(&Utc.from_utc_datetime(&start))
            .take(1_000_000)
        {
            let wall = candidate.naive_utc();
            if best.is_some_and(|(_, found)| wall > found + reach) {
                break;
            }
            let instants = match self.tz.from_local_datetime(&wall) {
                LocalResult::Single(t) => [Some(t), None],
                LocalResult::Ambiguous(a, b) => [Some(a), Some(b)],
                LocalResult::None => [None, None],
            };
            for at in instants
                .into_iter()
                .flatten()
                .map(|t| t.with_timezone(&Utc))
            {
                if at > after && best.is_none_or(|(b, _)| at < b) {
                    best = Some((at, wall));
                }
            }
        }
        best.map(|(at, _)| at)
    }

    /// Fixed hours: the schedule's wall-clock times in order, each mapped to the instant it
    /// names (the first of two in a repeated hour, the end of the change in a skipped one).
    fn next_on_the_wall_clock(
        &self,
        schedule: &cron::Schedule,
        after: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        // The wall clock at `after`, less an hour: a repeated hour's second pass still finds
        // its first pass's times, which are then skipped as not after `after`.
        let local = after.with_timezone(&self.tz).naive_local() - chrono::Duration::hours(2);
        let mut candidates = schedule.after(&Utc.from_utc_datetime(&local));
        // A year of candidates is more than any schedule's gap between two that map after
        // `after` (a leap day's is four years: those are still found, a year at a time).
        for _ in 0..100_000 {
            let wall = candidates.next()?.naive_utc();
            if let Some(at) = self.instant_of(wall)
                && at > after
            {
                return Some(at);
            }
        }
        None
    }

    /// The instant a wall-clock time names in the zone: the earlier of two, or for a time the
    /// clock skipped, the first instant after the change.
    fn instant_of(&self, wall: NaiveDateTime) -> Option<DateTime<Utc>> {
        match self.tz.from_local_datetime(&wall) {
            LocalResult::Single(t) | LocalResult::Ambiguous(t, _) => Some(t.with_timezone(&Utc)),
            LocalResult::None => {
                // Clocks skip at most a few hours: find the first wall-clock minute that exists.
                let mut probe = wall;
                for _ in 0..(24 * 60) {
                    probe += chrono::Duration::minutes(1);
                    let probe_minute = probe
                        .with_second(0)
                        .and_then(|p| p.with_nanosecond(0))
                        .unwrap_or(probe);
                    if let LocalResult::Single(t) | LocalResult::Ambiguous(t, _) =
                        self.tz.from_local_datetime(&probe_minute)
                    {
                        return Some(t.with_timezone(&Utc));
                    }
                }
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("rfc3339")
            .with_timezone(&Utc)
    }

    fn fires(when: &When, from: &str, to: &str) -> Vec<String> {
        when.between(utc(from), utc(to), 100)
            .into_iter()
            .map(|t| t.with_timezone(&when.tz).to_rfc3339())
            .collect()
    }

    #[test]
    fn a_skipped_time_fires_right_after_the_change_and_a_repeated_one_once() {
        let nightly = When::parse("0 30 2 * * *", Some("Europe/Berlin")).expect("valid");
        // 2026-03-29: 02:00 CET becomes 03:00 CEST.
        assert_eq!(
            fires(&nightly, "2026-03-27T12:00:00Z", "2026-03-30T12:00:00Z"),
            [
                "2026-03-28T02:30:00+01:00",
                "2026-03-29T03:00:00+02:00",
                "2026-03-30T02:30:00+02:00"
            ]
        );
        // 2026-10-25: 03:00 CEST becomes 02:00 CET; 02:30 comes twice and fires once.
        assert_eq!(
            fires(&nightly, "2026-10-24T12:00:00Z", "2026-10-26T12:00:00Z"),
            ["2026-10-25T02:30:00+02:00", "2026-10-26T02:30:00+01:00"]
        );
        // Asked from inside the repeated hour's second pass, it does not fire again.
        assert_eq!(
            nightly
                .next_after(utc("2026-10-25T01:45:00Z"))
                .map(|t| t.to_rfc3339()),
            Some("2026-10-26T01:30:00+00:00".into())
        );
    }

    #[test]
    fn an_hourly_schedule_follows_time_through_both_changes() {
        let quarter = When::parse("0 15 * * * *", Some("Europe/Berlin")).expect("valid");
        let spring = fires(&quarter, "2026-03-29T00:00:00Z", "2026-03-29T02:00:00Z");
        assert_eq!(
            spring,
            ["2026-03-29T01:15:00+01:00", "2026-03-29T03:15:00+02:00"],
            "an hour apart: the skipped hour has no 02:15"
        );
        let autumn = fires(&quarter, "2026-10-24T23:30:00Z", "2026-10-25T02:30:00Z");
        assert_eq!(
            autumn,
            [
                "2026-10-25T02:15:00+02:00",
                "2026-10-25T02:15:00+01:00",
                "2026-10-25T03:15:00+01:00"
            ]
        );
    }

    #[test]
    fn five_fields_shorthands_and_every() {
        let five = When::parse("*/30 * * * *", None).expect("five fields");
        assert_eq!(
            fires(&five, "2026-12-08T00:00:00Z", "2026-12-08T01:00:00Z"),
            ["2026-12-08T00:30:00+00:00", "2026-12-08T01:00:00+00:00"]
        );
        let hourly = When::parse("@hourly", Some("Asia/Kolkata")).expect("shorthand");
        assert_eq!(
            hourly
                .next_after(utc("2026-12-08T00:00:00Z"))
                .map(|t| t.to_rfc3339()),
            Some("2026-12-08T00:30:00+00:00".into()),
            "on the hour of the zone's clock"
        );
        let every = When::parse("@every 30s", None).expect("every");
        assert_eq!(
            fires(&every, "2026-12-08T00:00:10Z", "2026-12-08T00:01:00Z"),
            ["2026-12-08T00:00:30+00:00", "2026-12-08T00:01:00+00:00"]
        );
        for (bad, says) in [
            ("0 0 2 * *x", "not a cron expression"),
            ("1 2 3", "3 fields"),
            ("@often", "no shorthand"),
            ("@every soon", "@every soon"),
            ("@every 10ms", "at least one second"),
        ] {
            let err = When::parse(bad, None).expect_err(bad);
            assert!(err.contains(says), "{bad}: {err}");
        }
        let err = When::parse("@daily", Some("Mars/Olympus")).expect_err("zone");
        assert!(err.contains("IANA"), "{err}");
    }
}
