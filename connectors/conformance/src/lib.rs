//! The connector conformance suite: one set of delivery scenarios (the [`cases`]) that every
//! fnbroker connector must pass, run on the real servers with the real binary, and the harness
//! they run on.
//!
//! A connector crate runs the whole suite by implementing an [`Adapter`] (prepare a topic,
//! publish numbered messages, tell a received message's number) and, where they apply,
//! [`Modes`] (it carries CloudEvents in binary and structured mode), [`Restartable`] (its broker
//! can run privately and be restarted) and [`Replicas`] (two processes can share its
//! subscription); then one line in its `tests/conformance.rs`:
//!
//! ```ignore
//! fnbroker_conformance::suite!(MyAdapter, restart, modes, replicas);
//! ```
//!
//! Every case becomes one test of that binary, so nextest runs them in parallel and a failure
//! names the cell of the matrix it breaks (`cargo nextest run -p fnbroker-kafka --test
//! conformance`). A case states what every source must give; where a source cannot (core NATS
//! and HTTP cannot redeliver), the adapter says so by [`Redelivers`] and the case measures the
//! gap instead of asserting zero, printing it (`--no-capture`). The matrix (connector x case) is
//! the README's guarantees table.
//!
//! The binary the cases start is `FNBROKER_BIN` when set, otherwise the `fnbroker` that the same
//! build put next to the test executable (`cargo nextest run --workspace` builds it).
//!
//! Besides the suite, the crate holds what fnbroker's own end-to-end tests share: the process
//! driver ([`Fnbroker`]), a recording function server ([`FnServer`]), test certificates
//! ([`pki`]) and, behind a feature per broker, the helpers of each test broker (clients, a
//! private server of the test's own, publishing).
//!
//! A harness fails the test it runs in: its functions panic with what went wrong instead of
//! returning errors.

pub mod adapter;
pub mod cases;
mod harness;
pub mod pki;

#[cfg(feature = "amqp")]
pub mod amqp;
#[cfg(feature = "kafka")]
pub mod kafka;
#[cfg(feature = "mqtt")]
pub mod mqtt;
#[cfg(feature = "nats")]
pub mod nats;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "redis")]
pub mod redis;

pub use adapter::{
    Adapter, Mode, Modes, Redelivers, Replicas, Restartable, Topic, body_of, headers_of, unique_id,
};
pub use harness::*;

/// A YAML text from a template whose placeholders are `<name>`: `yaml!("web: { http: { listen:
/// \"127.0.0.1:<port>\" } }", port = port)`. Configurations stay readable YAML (no `{{ }}`
/// escapes), and a placeholder given but not in the template fails the test.
#[macro_export]
macro_rules! yaml {
    ($template:expr $(, $name:ident = $value:expr)* $(,)?) => {
        $crate::fill(
            $template,
            &[$((stringify!($name), &$value as &dyn ::std::fmt::Display)),*],
        )
    };
}

/// [`yaml!`]'s substitution: each `<name>` of `values` in `template` replaced by its value, in
/// one pass (a value is not searched again).
pub fn fill(template: &str, values: &[(&str, &dyn std::fmt::Display)]) -> String {
    let mut used = vec![false; values.len()];
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(at) = rest.find('<') {
        out.push_str(&rest[..at]);
        let tail = &rest[at + 1..];
        let found = values
            .iter()
            .enumerate()
            .find(|(_, (name, _))| tail.strip_prefix(name).is_some_and(|t| t.starts_with('>')));
        match found {
            Some((i, (name, value))) => {
                out.push_str(&value.to_string());
                used[i] = true;
                rest = &tail[name.len() + 1..];
            }
            None => {
                out.push('<');
                rest = tail;
            }
        }
    }
    out.push_str(rest);
    for ((name, _), used) in values.iter().zip(used) {
        assert!(used, "`<{name}>` is not in the template: {template}");
    }
    out
}

/// The conformance suite for one adapter: a test per case, in the module where it is invoked.
///
/// `suite!(A)` runs the cases every connector passes; the optional parts add the cases of the
/// traits the adapter implements: `restart` ([`Restartable`]: the broker restarted under load),
/// `modes` ([`Modes`]: plain, binary and structured messages), `replicas` ([`Replicas`]: one of
/// two replicas killed). The invoking crate needs `tokio` (its test macro).
#[macro_export]
macro_rules! suite {
    ($adapter:ty $(, $part:ident)* $(,)?) => {
        $crate::__case!($adapter, every_message_reaches_the_function_once, every_message_once);
        $crate::__case!($adapter, retries_then_dead_letter_and_replies, retries_dead_letter_and_replies);
        $crate::__case!($adapter, ordered_keys_hold_through_a_hand_back, ordered_through_a_hand_back);
        $crate::__case!($adapter, kill_9_midway, kill_9_midway);
        $crate::__case!($adapter, sigterm_midway, sigterm_midway);
        $crate::__case!($adapter, reload_swapping_triggers_under_load, reload_swapping_triggers);
        $crate::__case!(
            $adapter,
            reload_reopening_the_subscription_under_load,
            reload_reopening_the_subscription
        );
        $crate::__case!($adapter, retired_and_back, retired_and_back);
        $crate::__case!($adapter, a_minute_of_function_outage, a_minute_of_function_outage);
        $( $crate::__part!($part, $adapter); )*
    };
}

/// One case as a test (used by [`suite!`]).
#[doc(hidden)]
#[macro_export]
macro_rules! __case {
    ($adapter:ty, $test:ident, $case:ident) => {
        #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $test() {
            $crate::cases::$case(<$adapter as $crate::Adapter>::new().await).await;
        }
    };
}

/// An optional part of [`suite!`].
#[doc(hidden)]
#[macro_export]
macro_rules! __part {
    (restart, $adapter:ty) => {
        /// On a server of the case's own (nats-server, Mosquitto, redis-server, PostgreSQL,
        /// tansu, a RabbitMQ node).
        #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn broker_restarted_under_load() {
            $crate::cases::broker_restarted(<$adapter as $crate::Restartable>::private().await)
                .await;
        }
    };
    (modes, $adapter:ty) => {
        $crate::__case!($adapter, plain_binary_and_structured_messages, three_modes);
    };
    (replicas, $adapter:ty) => {
        $crate::__case!($adapter, a_replica_killed, a_replica_killed);
    };
}
