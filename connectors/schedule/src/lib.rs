//! The schedule connector: events on a clock. Each named schedule is a cron expression (or
//! `@every`) in a time zone; a trigger takes one by name as its topic.
#![forbid(unsafe_code)]
#![deny(unreachable_pub)]
#![warn(missing_docs)]

pub mod when;
