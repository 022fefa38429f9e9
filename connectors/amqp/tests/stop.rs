//! Stopping a consumer while messages stream, many times over, against the RabbitMQ on
//! 127.0.0.1:5672: every stop ends within its bound, and no stop turns its own connection into
//! an error. (Closing the connection while lapin is still closing a dropped channel did: lapin
//! logs "Connection error" and `Connection::close` could then wait forever, which held a reload.)

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use fnbroker_amqp::{AmqpConnector, AmqpSettings};
use fnbroker_core::{Connector, Settlement};
use lapin::options::{BasicPublishOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use tracing_subscriber::layer::SubscriberExt;

const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const ROUNDS: usize = 300;

/// Counts the ERROR events lapin logs.
struct LapinErrors(Arc<AtomicUsize>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for LapinErrors {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let meta = event.metadata();
        if *meta.level() == tracing::Level::ERROR && meta.target().starts_with("lapin") {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_under_load_closes_cleanly_every_time() {
    let errors = Arc::new(AtomicUsize::new(0));
    tracing::subscriber::set_global_default(
        tracing_subscriber::registry().with(LapinErrors(Arc::clone(&errors))),
    )
    .expect("the only subscriber of this test binary");

    let admin = Connection::connect(URL, ConnectionProperties::default())
        .await
        .expect("RabbitMQ must run on 127.0.0.1:5672 (scripts/services.sh starts it)");
    let channel = admin.create_channel().await.expect("channel");
    let queue = format!("stop-{}", std::process::id());
    channel
        .queue_declare(
            queue.clone().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("declare");

    // A publisher that keeps a few thousand messages ready, until the rounds are over.
    let done = Arc::new(AtomicBool::new(false));
    let publisher = {
        let (channel, queue, done) = (channel.clone(), queue.clone(), Arc::clone(&done));
        tokio::spawn(async move {
            for i in 0..200_000u32 {
                if done.load(Ordering::Relaxed) {
                    break;
                }
                channel
                    .basic_publish(
                        "".into(),
                        queue.clone().into(),
                        BasicPublishOptions::default(),
                        &i.to_be_bytes(),
                        BasicProperties::default(),
                    )
                    .await
                    .expect("publish");
                if i % 256 == 255 {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
        })
    };

    // Busy cores, as on a loaded CI machine: the stop's steps get preempted between each other.
    let hogs: Vec<_> = (0..3)
        .map(|_| {
            let done = Arc::clone(&done);
            std::thread::spawn(move || {
                while !done.load(Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            })
        })
        .collect();
    let settings: AmqpSettings =
        serde_json::from_value(serde_json::json!({ "url": URL })).expect("settings");
    let connector = AmqpConnector::new("c", settings).expect("connector");
    for round in 0..ROUNDS {
        let mut source = connector
            .reader("stop", &queue, 64)
            .await
            .expect("subscribe")
            .source;
        // Take some deliveries: the first half acknowledged, the rest handed back by the stop.
        let mut held = Vec::new();
        for n in 0..16 {
            let Ok(Some(msg)) = tokio::time::timeout(Duration::from_secs(10), source.next()).await
            else {
                panic!("round {round}: no delivery within 10 s");
            };
            if n % 2 == 0 {
                msg.ack.settle(Settlement::Delivered { reply: None });
            } else {
                held.push(msg);
            }
        }
        source.stopping();
        drop(held);
        tokio::time::timeout(Duration::from_secs(20), source.close())
            .await
            .unwrap_or_else(|_| panic!("round {round}: the stop did not end within 20 s"));
    }
    done.store(true, Ordering::Relaxed);
    publisher.await.expect("publisher");
    for hog in hogs {
        hog.join().expect("hog");
    }
    channel
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await
        .expect("delete");
    let _ = admin.close(200, "done".into()).await;
    assert_eq!(
        errors.load(Ordering::Relaxed),
        0,
        "lapin reported connection errors while {ROUNDS} consumers stopped"
    );
}
