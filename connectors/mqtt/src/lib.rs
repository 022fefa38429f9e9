//! The MQTT connector (MQTT 5 and 3.1.1, on rumqttc).
//!
//! **Source.** One client connection per connector carries every subscription of its triggers.
//! `group` turns a subscription into a shared one (`$share/<group>/<filter>`), so replicas split
//! the work. For QoS 1 and 2 the session is persistent (clean start off, a session expiry, a
//! stable client id) and acknowledgements are manual: the PUBACK/PUBREC leaves only when the
//! engine settled the message, so a crash before that gets it redelivered by the broker when
//! fnbroker connects again. The subscriptions are registered before the connection opens, so the
//! messages the broker held for the session are not lost on start. QoS 0 is at-most-once.
//!
//! A message that matches several subscriptions (overlapping filters) goes to each, and is
//! acknowledged when all of them finished. On MQTT 5 each subscription carries an identifier, so
//! a broker that sends one copy per subscription (Mosquitto does) is routed exactly; on 3.1.1 such
//! a broker's copies each reach every matching trigger.
//!
//! **Reconnect.** A dropped connection is retried with backoff (1 s doubling to 30 s), and every
//! subscription is made again on each connect; `is_ready` reflects the connection.
//!
//! **Sink.** A second connection (`<client_id>-pub-<random>`, clean session) publishes replies and dead
//! letters at `publish_qos`, in binary mode on MQTT 5 and structured mode on 3.1.1, and resolves
//! only on the broker's PUBACK (QoS 1) or PUBCOMP (QoS 2), correlated by packet id: rumqttc's
//! `publish` returns when the packet is queued, not when it is acknowledged.
#![forbid(unsafe_code)]
#![deny(unreachable_pub)]
#![warn(missing_docs)]

pub mod binding;
mod client;
mod config;
mod consume;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use fnbroker_core::{Connector, ConnectorError, Event, Incoming, Sink, Source, Subscription};
use tokio::sync::{OnceCell, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

pub use crate::config::{MqttSettings, MqttSourceSettings, Plugin};

use crate::client::{Client, Ev, EventLoop, Options};
use crate::consume::{Consumer, Control, Sub};

/// The most QoS 1 and 2 messages the broker may have unacknowledged towards fnbroker (MQTT 5
/// Receive Maximum; 3.1.1 has none, and the acknowledger's in-order PUBACKs bound it instead).
const RECEIVE_MAXIMUM: u16 = 100;

/// The MQTT connector of one configuration entry.
pub struct MqttConnector {
    name: String,
    /// The settings it was built with (a reader is built from them, with its own client id).
    settings: MqttSettings,
    options: Options,
    publish_qos: u8,
    subs: Mutex<Vec<Sub>>,
    /// Subscriptions opened or closed while the consumer runs.
    control: mpsc::UnboundedSender<Control>,
    /// The consumer's end of `control`, until it starts.
    control_rx: Mutex<Option<mpsc::UnboundedReceiver<Control>>>,
    next_id: AtomicUsize,
    /// Whether `start` was called: later subscriptions go to the running consumer.
    started: AtomicBool,
    ready: Arc<AtomicBool>,
    link: Arc<fnbroker_core::kit::Link>,
    stop: CancellationToken,
    consumer: tokio::sync::Mutex<Option<Consumer>>,
    sink: OnceCell<Arc<MqttSink>>,
}

impl MqttConnector {
    /// A connector named `name`; it connects in `start` (after every subscription is known).
    pub fn new(name: &str, cfg: &MqttSettings) -> Result<Self, ConnectorError> {
        let err = |message: String| ConnectorError::io(name, message);
        let url = url::Url::parse(&cfg.url).map_err(|e| err(format!("invalid URL: {e}")))?;
        let host = url
            .host_str()
            .ok_or_else(|| err("the URL has no host".into()))?
            .to_string();
        let secure = matches!(url.scheme(), "mqtts" | "ssl");
        let tls = match (&cfg.tls, secure) {
            (Some(tls), _) => Some(tls.clone()),
            (None, true) => Some(fnbroker_core::tls::Tls::default()),
            (None, false) => None,
        };
        let tls = tls
            .map(|t| {
                t.warn_if_insecure("connector", name);
                t.client_config().map(Arc::new)
            })
            .transpose()
            .map_err(|e| err(format!("tls: {e}")))?;
        let options = Options {
            client_id: cfg
                .client_id
                .clone()
                .unwrap_or_else(|| fnbroker_core::kit::replica_name(name)),
            host,
            port: url
                .port()
                .unwrap_or(if tls.is_some() { 8883 } else { 1883 }),
            tls,
            v5: cfg.version != 3,
            clean: false,
            keep_alive: cfg.keep_alive.get(),
            session_expiry: cfg.session_expiry.get(),
            receive_maximum: RECEIVE_MAXIMUM,
            credentials: cfg
                .username
                .clone()
                .map(|u| (u, cfg.password.clone().unwrap_or_default())),
        };
        let (control, control_rx) = mpsc::unbounded_channel();
        Ok(Self {
            name: name.to_string(),
            settings: cfg.clone(),
            options,
            publish_qos: cfg.publish_qos.min(2),
            subs: Mutex::new(Vec::new()),
            control,
            control_rx: Mutex::new(Some(control_rx)),
            next_id: AtomicUsize::new(0),
            started: AtomicBool::new(false),
            ready: Arc::new(AtomicBool::new(false)),
            link: fnbroker_core::kit::Link::new(name, "the MQTT broker", &cfg.url),
            stop: CancellationToken::new(),
            consumer: tokio::sync::Mutex::new(None),
            sink: OnceCell::new(),
        })
    }
}

/// How many messages beyond what its triggers hold a consuming connection lets the broker send
/// unacknowledged (MQTT 5): see [`receive_maximum`].
pub(crate) const RECEIVE_HEADROOM: usize = 1024;

/// The receive maximum of a consuming connection whose triggers hold `room` messages: the broker
/// may send at most this many unacknowledged messages.
///
/// The room plus [`RECEIVE_HEADROOM`]. Mosquitto holds at most `max_queued_messages` (1000 by
/// default) beyond a client's receive maximum and silently drops what comes past that; the
/// messages whose PUBACK it has not read yet count against that allowance, and under full load
/// it reads them late (one thread, busy with the publishers). With a receive maximum of twice
/// the room (64 + 64), publishers 1,000 messages ahead of the functions lost 1,900 of 100,000
/// messages per run (Mosquitto 2.0.11, its defaults): 64 PUBACKs unread were enough. With the
/// headroom, it takes 1,024 unread PUBACKs beyond what a publisher 1,000 ahead keeps waiting.
/// The broker sends what the room cannot take at once, and it waits in the connection's queue
/// (in order, unacknowledged: the broker sends it again if fnbroker stops first), so the memory
/// this costs is bounded by the headroom: 1,024 messages, 4 MiB at 4 KiB each.
fn receive_maximum(room: usize) -> u16 {
    u16::try_from(room.saturating_add(RECEIVE_HEADROOM)).unwrap_or(u16::MAX)
}

impl MqttConnector {
    fn lock_subs(&self) -> Result<std::sync::MutexGuard<'_, Vec<Sub>>, ConnectorError> {
        self.subs
            .lock()
            .map_err(|_| ConnectorError::io(&self.name, "subscription table poisoned"))
    }

    /// Connects and consumes `subs` (and what comes later through `control`).
    fn start_consumer(&self, subs: Vec<Sub>) -> Option<Consumer> {
        let control = self.control_rx.lock().ok()?.take()?;
        let mut options = self.options.clone();
        // (Subscriptions opened later share the receive maximum.)
        let room: usize = subs.iter().map(|s| s.tx.max_capacity()).sum();
        options.receive_maximum = receive_maximum(room);
        Some(Consumer::start(
            self.name.clone(),
            &options,
            subs,
            Arc::clone(&self.ready),
            Arc::clone(&self.link),
            control,
            room,
        ))
    }
}

#[async_trait]
impl Connector for MqttConnector {
    fn kind(&self) -> &'static str {
        "mqtt"
    }

    fn name(&self) -> &str {
        &self.name
    }

    /// A connection of its own, with the client id `<client_id>-<reader>` and a persistent
    /// session: the broker keeps what arrives on `topic` for that session from its first run on.
    async fn reader(
        &self,
        reader: &str,
        topic: &str,
        max_in_flight: usize,
    ) -> Result<fnbroker_core::Reader, ConnectorError> {
        let mut settings = self.settings.clone();
        settings.client_id = Some(format!("{}-{reader}", self.options.client_id));
        let connector = MqttConnector::new(&self.name, &settings)?;
        let sub = Subscription::reader(&self.name, Some(topic), Default::default(), max_in_flight);
        let source = connector.subscribe(&sub).await?;
        connector.start().await?;
        Ok(fnbroker_core::Reader {
            source: Box::new(ReaderSource { source, connector }),
            positional: false,
        })
    }

    async fn subscribe(&self, sub: &Subscription) -> Result<Box<dyn Source>, ConnectorError> {
        let topic = sub.from.topic();
        let source: MqttSourceSettings = sub.settings()?;
        let filter = match source.group.as_deref() {
            Some(g) => format!("$share/{g}/{topic}"),
            None => topic.to_string(),
        };
        let qos = source.qos.min(2);
        let (tx, rx) = mpsc::channel(fnbroker_core::kit::source_buffer(sub.max_in_flight));
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let new = Sub {
            id,
            filter,
            qos,
            tx,
        };
        let source = Box::new(MqttSource {
            rx,
            id,
            control: self.control.clone(),
            retired: false,
            // QoS 0 is at-most-once; QoS 1/2 messages handed back are delivered again.
            redelivery: if qos == 0 {
                fnbroker_core::Redelivery::None
            } else {
                fnbroker_core::Redelivery::Later
            },
        });
        if !self.started.load(Ordering::Acquire) {
            self.lock_subs()?.push(new);
            return Ok(source);
        }
        // Running: the consumer takes it, or starts with it if it is the first.
        let mut consumer = self.consumer.lock().await;
        if consumer.is_some() {
            let _ = self.control.send(Control::Add(new));
        } else {
            self.lock_subs()?.push(new.clone());
            *consumer = self.start_consumer(vec![new]);
        }
        Ok(source)
    }

    async fn sink(
        &self,
        _: &fnbroker_core::values::Destination,
    ) -> Result<Arc<dyn Sink>, ConnectorError> {
        let sink = self
            .sink
            .get_or_init(|| async {
                let mut options = self.options.clone();
                // A clean session keeps nothing worth a stable id, and an id of its own per
                // process means two processes with one configuration (a replica and `fnbroker
                // send`, replicas sharing a `client_id`) never knock each other's publisher off
                // the broker.
                options.client_id = publisher_id(&options.client_id);
                options.clean = true;
                Arc::new(MqttSink::start(
                    self.name.clone(),
                    options,
                    self.publish_qos,
                    self.stop.clone(),
                ))
            })
            .await;
        Ok(Arc::clone(sink) as Arc<dyn Sink>)
    }

    async fn start(&self) -> Result<(), ConnectorError> {
        let mut consumer = self.consumer.lock().await;
        self.started.store(true, Ordering::Release);
        let subs = self.subs.lock().map(|s| s.clone()).unwrap_or_default();
        if subs.is_empty() {
            return Ok(());
        }
        *consumer = self.start_consumer(subs);
        Ok(())
    }

    fn link(&self) -> Option<&fnbroker_core::kit::Link> {
        Some(&self.link)
    }

    fn is_ready(&self) -> bool {
        // (A connector whose first subscription comes while it runs counts it from then.)
        let consuming = self.subs.lock().is_ok_and(|s| !s.is_empty());
        (!consuming || self.ready.load(Ordering::Acquire))
            && self
                .sink
                .get()
                .is_none_or(|s| s.ready.load(Ordering::Acquire))
    }

    /// Stops consuming once every source was closed: the PUBACKs of everything that finished go
    /// out, then a DISCONNECT; then the publisher stops.
    async fn stop(&self) {
        if let Some(consumer) = self.consumer.lock().await.take() {
            consumer.stop().await;
        }
        self.stop.cancel();
    }
}

/// The client id of a publishing connection: `<client_id>-pub-<8 random hex digits>`.
fn publisher_id(client_id: &str) -> String {
    let unique = uuid::Uuid::new_v4().simple().to_string();
    format!("{client_id}-pub-{}", &unique[..8])
}

/// The source of one subscription: the dispatcher fills its channel.
struct MqttSource {
    rx: mpsc::Receiver<Incoming>,
    id: usize,
    control: mpsc::UnboundedSender<Control>,
    retired: bool,
    redelivery: fnbroker_core::Redelivery,
}

#[async_trait]
impl Source for MqttSource {
    /// Cancel safe: a message is either returned or still in the channel.
    async fn next(&mut self) -> Option<Incoming> {
        self.rx.recv().await
    }

    /// Given up for good: unsubscribed at close (when no other subscription has the filter).
    fn retire(&mut self) {
        self.retired = true;
    }

    fn capabilities(&self) -> fnbroker_core::SourceCapabilities {
        fnbroker_core::SourceCapabilities::redelivering(self.redelivery)
    }

    async fn close(mut self: Box<Self>) {
        // Retired: nothing more is routed here and the broker forgets the subscription. Closed
        // for a restart or a reopening, nothing more is routed here either, and the filter stays
        // subscribed in the session: the broker keeps what arrives meanwhile, and the
        // subscription that takes its place gets it (with what this one handed back).
        let _ = self.control.send(if self.retired {
            Control::Remove(self.id)
        } else {
            Control::Detach(self.id)
        });
        // What the dispatcher queued and the engine never took is handed back now: the
        // dispatcher delivers it to the subscription that takes over the filter, or, stopping,
        // leaves it unacknowledged for the session to send again.
        self.rx.close();
        while self.rx.try_recv().is_ok() {}
    }
}

/// A reader's source, with the connection it reads on: closed, it stops the connection (after
/// acknowledging what was settled).
struct ReaderSource {
    source: Box<dyn Source>,
    connector: MqttConnector,
}

#[async_trait]
impl Source for ReaderSource {
    async fn next(&mut self) -> Option<Incoming> {
        self.source.next().await
    }

    fn stopping(&mut self) {
        self.source.stopping();
    }

    async fn close(self: Box<Self>) {
        let this = *self;
        this.source.close().await;
        this.connector.stop().await;
    }
}

type Waiter = oneshot::Sender<Result<(), String>>;

/// Publishes through a connection of its own and waits for the broker's acknowledgement.
struct MqttSink {
    connector: String,
    client: Client,
    v5: bool,
    qos: u8,
    /// Publishes queued and not yet sent, in order; the event loop sends them in this order.
    queued: Arc<Mutex<VecDeque<Waiter>>>,
    /// Serializes "queue the waiter, queue the publish" so both queues keep one order.
    order: tokio::sync::Mutex<()>,
    ready: Arc<AtomicBool>,
}

impl MqttSink {
    fn start(connector: String, options: Options, qos: u8, stop: CancellationToken) -> Self {
        let (client, events) = client::connect(&options);
        let queued: Arc<Mutex<VecDeque<Waiter>>> = Arc::default();
        let ready = Arc::new(AtomicBool::new(false));
        tokio::spawn(publisher(
            connector.clone(),
            events,
            Arc::clone(&queued),
            Arc::clone(&ready),
            stop,
        ));
        Self {
            connector,
            client,
            v5: options.v5,
            qos,
            queued,
            order: tokio::sync::Mutex::new(()),
            ready,
        }
    }
}

async fn publisher(
    name: String,
    mut events: EventLoop,
    queued: Arc<Mutex<VecDeque<Waiter>>>,
    ready: Arc<AtomicBool>,
    stop: CancellationToken,
) {
    let mut sent: HashMap<u16, Waiter> = HashMap::new();
    let mut backoff =
        fnbroker_core::kit::Backoff::new(consume::RECONNECT_MIN, consume::RECONNECT_MAX);
    loop {
        let ev = tokio::select! {
            () = stop.cancelled() => break,
            ev = events.poll() => ev,
        };
        match ev {
            Ok(Ev::Connected { .. }) => {
                backoff.reset();
                ready.store(true, Ordering::Release);
            }
            Ok(Ev::Sent(pkid)) => {
                let waiter = queued.lock().ok().and_then(|mut q| q.pop_front());
                if let Some(w) = waiter {
                    if pkid == 0 {
                        let _ = w.send(Ok(()));
                    } else {
                        sent.insert(pkid, w);
                    }
                }
            }
            Ok(Ev::Confirmed { pkid, error }) => {
                if let Some(w) = sent.remove(&pkid) {
                    let _ = w
                        .send(error.map_or(Ok(()), |e| Err(format!("the broker refused it: {e}"))));
                }
            }
            Ok(_) => {}
            Err(e) => {
                ready.store(false, Ordering::Release);
                // The session is clean: whatever was queued or unacknowledged is gone with the
                // connection. Fail it, so the engine publishes again.
                for (_, w) in sent.drain() {
                    let _ = w.send(Err(format!("connection lost: {e}")));
                }
                if let Ok(mut q) = queued.lock() {
                    for w in q.drain(..) {
                        let _ = w.send(Err(format!("connection lost: {e}")));
                    }
                }
                tracing::warn!(connector = %name, error = %e, "mqtt publisher connection lost; reconnecting");
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(backoff.next_delay()) => {}
                }
            }
        }
    }
}

#[async_trait]
impl Sink for MqttSink {
    async fn publish(&self, topic: &str, event: &Event) -> Result<(), ConnectorError> {
        let (payload, content_type, props) = if self.v5 {
            binding::encode_binary(event)
        } else {
            (binding::encode_structured(event), None, Vec::new())
        };
        self.send(topic, payload, content_type, props).await
    }

    /// MQTT 3.1.1 has no content type: there the bytes alone.
    async fn publish_plain(
        &self,
        topic: &str,
        data: &[u8],
        content_type: Option<&str>,
    ) -> Result<(), ConnectorError> {
        let content_type = content_type.filter(|_| self.v5).map(str::to_string);
        self.send(topic, data.to_vec(), content_type, Vec::new())
            .await
    }
}

impl MqttSink {
    /// Publishes in order and waits for the broker's acknowledgement.
    async fn send(
        &self,
        topic: &str,
        payload: Vec<u8>,
        content_type: Option<String>,
        props: Vec<(String, String)>,
    ) -> Result<(), ConnectorError> {
        let err = |message: String| {
            ConnectorError::io(
                &self.connector,
                format!("cannot publish to `{topic}`: {message}"),
            )
        };
        let (tx, rx) = oneshot::channel();
        {
            let _order = self.order.lock().await;
            if let Ok(mut q) = self.queued.lock() {
                q.push_back(tx);
            }
            if let Err(e) = self
                .client
                .publish(topic, self.qos, payload, content_type, props)
                .await
            {
                // Not queued: take our waiter back so the order stays aligned.
                if let Ok(mut q) = self.queued.lock() {
                    q.pop_back();
                }
                return Err(err(e));
            }
        }
        match tokio::time::timeout(Duration::from_secs(30), rx).await {
            Ok(Ok(result)) => result.map_err(err),
            Ok(Err(_)) => Err(err("the publisher stopped".into())),
            Err(_) => Err(err("no acknowledgement within 30s".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_receive_maximum_leaves_room_for_acknowledgements_in_transit() {
        assert_eq!(receive_maximum(64), 64 + 1024);
        assert_eq!(receive_maximum(0), 1024);
        assert_eq!(receive_maximum(70_000), u16::MAX);
        // Never just what the triggers hold: then all of it may be finished and unacknowledged
        // at once, and the broker's queue allowance is used up by PUBACKs it has not read yet.
        for room in [1, 20, 64, 1024] {
            assert!(usize::from(receive_maximum(room)) >= room + RECEIVE_HEADROOM);
        }
    }
}
