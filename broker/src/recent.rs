//! The last warnings and errors the process logged, for the status page: a tracing layer keeps
//! the 50 most recent (their text masked as the log's is), whichever crate wrote them.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::{Mutex, OnceLock};

use tracing::field::{Field, Visit};
use tracing_subscriber::layer::Context;

/// How many are kept.
const KEEP: usize = 50;

/// One warning or error.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    /// RFC 3339, UTC.
    pub(crate) time: String,
    pub(crate) level: &'static str,
    pub(crate) target: String,
    /// The message and its fields, `key=value`, masked.
    pub(crate) text: String,
}

fn kept() -> &'static Mutex<VecDeque<Entry>> {
    static KEPT: OnceLock<Mutex<VecDeque<Entry>>> = OnceLock::new();
    KEPT.get_or_init(|| Mutex::new(VecDeque::with_capacity(KEEP)))
}

/// The kept entries, newest first.
pub(crate) fn entries() -> Vec<Entry> {
    kept()
        .lock()
        .map(|k| k.iter().rev().cloned().collect())
        .unwrap_or_default()
}

/// The layer that keeps them.
pub(crate) struct Recent;

/// Writes the message first, then the other fields.
#[derive(Default)]
struct Text {
    message: String,
    fields: String,
}

impl Visit for Text {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.fields, " {}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.fields, " {}={value}", field.name());
        }
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Recent {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        let level = *event.metadata().level();
        if level > tracing::Level::WARN {
            return;
        }
        let mut text = Text::default();
        event.record(&mut text);
        let entry = Entry {
            time: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            level: if level == tracing::Level::ERROR {
                "error"
            } else {
                "warn"
            },
            target: event.metadata().target().to_string(),
            text: fnbroker_core::redact::url(&format!("{}{}", text.message, text.fields))
                .into_owned(),
        };
        if let Ok(mut k) = kept().lock() {
            if k.len() == KEEP {
                k.pop_front();
            }
            k.push_back(entry);
        }
    }
}
