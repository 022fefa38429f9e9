//! The connector conformance suite: one set of delivery scenarios (the [`cases`]) run against
//! every connector through a small [`adapters::Adapter`] each (prepare a topic, publish numbered
//! messages, tell a received message's number), on the real servers, with the real binary.
//!
//! Every case is one test per connector, named `suite::<connector>::<case>`, so nextest runs them in
//! parallel and a failure names the cell of the matrix it breaks. A case states what every
//! source must give; where a source cannot (core NATS and HTTP cannot redeliver), the case
//! says so by the adapter's [`adapters::Redelivers`] and measures the gap instead of asserting
//! zero, printing it (`cargo nextest run --test e2e suite:: --no-capture`).
//!
//! The matrix (connector x case) is the README's guarantees table.

mod adapters;
mod cases;

/// One module per connector with one test per case.
macro_rules! matrix {
    ($($connector:ident => $adapter:ty),* $(,)?) => {$(
        mod $connector {
            use crate::suite::adapters::Adapter as _;
            use crate::suite::cases;

            type A = $adapter;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn every_message_reaches_the_function_once() {
                cases::every_message_once(A::new().await).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn retries_then_dead_letter_and_replies() {
                cases::retries_dead_letter_and_replies(A::new().await).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn ordered_keys_hold_through_a_hand_back() {
                cases::ordered_through_a_hand_back(A::new().await).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn kill_9_midway() {
                cases::kill_9_midway(A::new().await).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sigterm_midway() {
                cases::sigterm_midway(A::new().await).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn reload_swapping_triggers_under_load() {
                cases::reload_swapping_triggers(A::new().await).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn reload_reopening_the_subscription_under_load() {
                cases::reload_reopening_the_subscription(A::new().await).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn retired_and_back() {
                cases::retired_and_back(A::new().await).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_minute_of_function_outage() {
                cases::a_minute_of_function_outage(A::new().await).await;
            }
        }
    )*};
}

matrix! {
    kafka => crate::suite::adapters::Kafka,
    jetstream => crate::suite::adapters::JetStream,
    nats_core => crate::suite::adapters::NatsCore,
    amqp => crate::suite::adapters::Amqp,
    mqtt => crate::suite::adapters::Mqtt,
    redis => crate::suite::adapters::Redis,
    postgres => crate::suite::adapters::Postgres,
    http => crate::suite::adapters::Http,
}

/// The broker restart case, on a server of the case's own (nats-server, Mosquitto,
/// redis-server, PostgreSQL, tansu, a RabbitMQ node); HTTP has no broker.
macro_rules! restarts {
    ($($connector:ident => $adapter:ty),* $(,)?) => {$(
        mod $connector {
            use crate::suite::adapters::Restartable as _;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn broker_restarted_under_load() {
                crate::suite::cases::broker_restarted(<$adapter>::private().await).await;
            }
        }
    )*};
}

mod restart {
    restarts! {
        kafka => crate::suite::adapters::Kafka,
        jetstream => crate::suite::adapters::JetStream,
        nats_core => crate::suite::adapters::NatsCore,
        amqp => crate::suite::adapters::Amqp,
        mqtt => crate::suite::adapters::Mqtt,
        redis => crate::suite::adapters::Redis,
        postgres => crate::suite::adapters::Postgres,
    }
}

/// The CloudEvents modes case, for the connectors whose messages carry events (PostgreSQL's
/// events are the changes it reads: their shape is tested in `tests/postgres.rs`).
macro_rules! modes {
    ($($connector:ident => $adapter:ty),* $(,)?) => {$(
        mod $connector {
            use crate::suite::adapters::Adapter as _;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn plain_binary_and_structured_messages() {
                crate::suite::cases::three_modes(<$adapter>::new().await).await;
            }
        }
    )*};
}

mod modes {
    modes! {
        kafka => crate::suite::adapters::Kafka,
        jetstream => crate::suite::adapters::JetStream,
        nats_core => crate::suite::adapters::NatsCore,
        amqp => crate::suite::adapters::Amqp,
        mqtt => crate::suite::adapters::Mqtt,
        redis => crate::suite::adapters::Redis,
        http => crate::suite::adapters::Http,
    }
}

/// The replica case, for the connectors whose subscription two processes share (HTTP has none:
/// each replica listens on its own; PostgreSQL's standby replica, which takes the slot over, is
/// tested in `tests/postgres.rs`).
macro_rules! replicas {
    ($($connector:ident => $adapter:ty),* $(,)?) => {$(
        mod $connector {
            use crate::suite::adapters::Adapter as _;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_replica_killed() {
                crate::suite::cases::a_replica_killed(<$adapter>::new().await).await;
            }
        }
    )*};
}

mod replicas {
    replicas! {
        kafka => crate::suite::adapters::Kafka,
        jetstream => crate::suite::adapters::JetStream,
        nats_core => crate::suite::adapters::NatsCore,
        amqp => crate::suite::adapters::Amqp,
        mqtt => crate::suite::adapters::Mqtt,
        redis => crate::suite::adapters::Redis,
    }
}
