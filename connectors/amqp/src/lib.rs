//! The AMQP 0-9-1 connector (RabbitMQ, on lapin).
//!
//! **Source** (`from: { connector, queue, declare }`): a consumer on an existing queue, or on one
//! it declares (and binds to an exchange) with `declare`. Prefetch (`basic.qos`) is the trigger's
//! `max_in_flight`; acknowledgements are manual: `basic.ack` once delivered (one `multiple` ack
//! for a run of settled deliveries, see `acks`), `basic.reject`
//! without requeue once dead-lettered or dropped (so a dead-letter exchange configured on the
//! queue also sees it), `basic.nack` with requeue for what is handed back at shutdown. Replicas
//! on one queue are competing consumers. **At-least-once.**
//!
//! **Reconnect.** Each subscription owns a connection named `connection_name`; when it drops
//! (closed by the server, RabbitMQ restarting) it is opened again with backoff and consuming
//! resumes. Deliveries in flight on the old channel cannot be acknowledged any more; RabbitMQ
//! requeues them when the channel closes, so they are redelivered, never lost.
//!
//! **Sink.** A connection of its own (`<connection_name>-pub`) with publisher confirms:
//! `publish` sends a persistent, mandatory message to the exchange with the topic as routing key
//! and resolves only on the broker's ack; a nack, or the return of an unroutable message, is an
//! error.
#![forbid(unsafe_code)]
#![deny(unreachable_pub)]
#![warn(missing_docs)]

pub mod binding;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use fnbroker_core::kit::{self, ChannelSource, source_buffer};
use fnbroker_core::values::Destination;
use fnbroker_core::{Connector, ConnectorError, Event, Incoming, Sink, Source, Subscription};
use futures::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{Channel, Connection, ExchangeKind};
use tokio::sync::{Mutex, mpsc};
use tokio_util::sync::CancellationToken;

mod acks;
mod config;
mod dial;

use dial::Dial;

pub use config::{AmqpDeclare, AmqpDestinationSettings, AmqpSettings, AmqpSourceSettings, Plugin};

/// The AMQP connector of one configuration entry.
pub struct AmqpConnector {
    name: String,
    config: AmqpSettings,
    dial: Dial,
    /// Subscriptions, and how many of them are consuming right now.
    subscriptions: Arc<AtomicUsize>,
    consuming: Arc<AtomicUsize>,
    link: Arc<kit::Link>,
    /// The depth of each consumed queue.
    backlogs: Arc<fnbroker_core::backlog::Backlogs>,
}

impl AmqpConnector {
    /// A connector named `name`; it connects when subscribed to or asked for a sink.
    pub fn new(name: impl Into<String>, config: AmqpSettings) -> Result<Self, ConnectorError> {
        let name = name.into();
        let connection_name = config
            .connection_name
            .clone()
            .unwrap_or_else(|| format!("fnbroker-{name}"));
        if let Some(tls) = &config.tls {
            tls.warn_if_insecure("connector", &name);
        }
        let dial = Dial::new(&config.url, connection_name, config.tls.as_ref())
            .map_err(|e| ConnectorError::permanent(&name, e))?;
        Ok(Self {
            backlogs: Arc::default(),
            link: kit::Link::new(&name, "the AMQP server", &config.url),
            name,
            config,
            dial,
            subscriptions: Arc::default(),
            consuming: Arc::default(),
        })
    }
}

#[async_trait]
impl Connector for AmqpConnector {
    fn kind(&self) -> &'static str {
        "amqp"
    }

    fn name(&self) -> &str {
        &self.name
    }

    /// A consumer on the queue `topic` (which must exist).
    async fn reader(
        &self,
        _reader: &str,
        topic: &str,
        max_in_flight: usize,
    ) -> Result<fnbroker_core::Reader, ConnectorError> {
        let keys = [("queue".to_string(), serde_json::Value::from(topic))].into();
        let sub = Subscription::reader(&self.name, None, keys, max_in_flight);
        Ok(fnbroker_core::Reader {
            source: self.subscribe(&sub).await?,
            positional: false,
        })
    }

    /// A durable queue per subscriber, declared and bound to the connector's `exchange` with the
    /// topic as routing key: each subscriber gets every message, its replicas compete for them.
    fn discovery_keys(
        &self,
        subscriber: &str,
        topic: &str,
    ) -> Result<fnbroker_core::contract::SourceKeys, fnbroker_core::registry::RouteError> {
        let exchange = self
            .config
            .exchange
            .as_deref()
            .filter(|e| !e.is_empty())
            .ok_or("discovery on amqp needs the connector's `exchange`: each function gets a queue of its own, bound to that exchange with the annotation's topic as routing key (the default exchange cannot be bound)")?;
        Ok([
            ("queue".to_string(), subscriber.into()),
            (
                "declare".to_string(),
                serde_json::json!({ "exchange": exchange, "routing_key": topic }),
            ),
        ]
        .into())
    }

    async fn subscribe(&self, sub: &Subscription) -> Result<Box<dyn Source>, ConnectorError> {
        let source: AmqpSourceSettings = sub.settings()?;
        let queue = source
            .queue
            .clone()
            .ok_or_else(|| ConnectorError::io(&self.name, "an amqp trigger needs a `queue`"))?;
        let prefetch = u16::try_from(sub.max_in_flight).unwrap_or(u16::MAX);
        let spec = ConsumerSpec {
            backlogs: Arc::clone(&self.backlogs),
            link: Arc::clone(&self.link),
            connector: self.name.clone(),
            dial: self.dial.clone(),
            queue,
            declare: source.declare,
            prefetch,
        };
        // A server that cannot be reached (or refuses the TLS handshake or the credentials) is
        // retried in the background, warned about and not ready, as every connector does; a
        // missing queue on a server that answers is a configuration error, at start.
        let first = match self.dial.connect().await {
            Ok(conn) => Some(
                spec.open(conn)
                    .await
                    .map_err(|e| ConnectorError::io(&self.name, e))?,
            ),
            Err(e) => {
                spec.warn_unreachable(&e.to_string());
                None
            }
        };
        let subscribed = kit::Counted::new(&self.subscriptions);
        let consuming = Arc::clone(&self.consuming);
        let unbind = spec.declare.as_ref().and_then(|d| {
            Some(Unbind {
                dial: spec.dial.clone(),
                queue: spec.queue.clone(),
                exchange: d.exchange.clone()?,
                routing_key: d.routing_key.clone().unwrap_or_else(|| "#".into()),
            })
        });
        let inner = ChannelSource::spawn(source_buffer(sub.max_in_flight), move |tx, stop| {
            consume(spec, first, tx, consuming, stop)
        });
        Ok(Box::new(AmqpSource {
            connector: self.name.clone(),
            inner,
            subscribed,
            unbind,
            retired: false,
        }))
    }

    async fn sink(&self, destination: &Destination) -> Result<Arc<dyn Sink>, ConnectorError> {
        let keys: AmqpDestinationSettings = destination.keys.get().map_err(|e| {
            ConnectorError::permanent(&self.name, format!("invalid destination: {e}")).caused_by(e)
        })?;
        let exchange = keys
            .exchange
            .or_else(|| self.config.exchange.clone())
            .unwrap_or_default();
        Ok(Arc::new(AmqpSink {
            connector: self.name.clone(),
            dial: self
                .dial
                .named(format!("{}-pub", self.dial.connection_name())),
            exchange,
            prefix: self.config.header_prefix.clone(),
            channel: Mutex::new(None),
        }))
    }

    fn is_ready(&self) -> bool {
        self.consuming.load(Ordering::Acquire) >= self.subscriptions.load(Ordering::Acquire)
    }

    fn link(&self) -> Option<&kit::Link> {
        Some(&self.link)
    }

    fn backlog(&self) -> Vec<fnbroker_core::backlog::Backlog> {
        self.backlogs.all()
    }
}

/// One subscription's consumer. Closed, it no longer counts for readiness; retired (its
/// discovered function is gone), the queue it declared is unbound from its exchange, so that it
/// stops filling while what it holds stays (a function that comes back finds it).
struct AmqpSource {
    connector: String,
    inner: ChannelSource,
    /// Its unit of the connector's subscriptions, for readiness: given back when the source
    /// goes, closed or dropped.
    subscribed: kit::Counted,
    unbind: Option<Unbind>,
    retired: bool,
}

/// The binding a declared queue was given.
struct Unbind {
    dial: Dial,
    queue: String,
    exchange: String,
    routing_key: String,
}

impl Unbind {
    async fn run(&self) -> Result<(), String> {
        let conn = self.dial.connect().await.map_err(|e| e.to_string())?;
        let channel = match conn.create_channel().await {
            Ok(channel) => channel,
            Err(e) => {
                dial::close(conn, &[], "fnbroker: cannot unbind").await;
                return Err(e.to_string());
            }
        };
        let result = channel
            .queue_unbind(
                self.queue.clone().into(),
                self.exchange.clone().into(),
                self.routing_key.clone().into(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| e.to_string());
        dial::close(conn, &[&channel], "fnbroker: queue unbound").await;
        result
    }
}

#[async_trait]
impl Source for AmqpSource {
    async fn next(&mut self) -> Option<Incoming> {
        self.inner.next().await
    }

    fn stopping(&mut self) {
        self.inner.stopping();
    }

    fn retire(&mut self) {
        self.retired = true;
    }

    async fn close(self: Box<Self>) {
        let Self {
            connector,
            inner,
            subscribed,
            unbind,
            retired,
        } = *self;
        Box::new(inner).close().await;
        drop(subscribed);
        if let (true, Some(unbind)) = (retired, unbind) {
            match unbind.run().await {
                Ok(()) => {
                    tracing::info!(connector = %connector, queue = %unbind.queue, exchange = %unbind.exchange, routing_key = %unbind.routing_key, "queue unbound: its subscription was retired; what it holds stays");
                }
                Err(e) => {
                    tracing::warn!(connector = %connector, queue = %unbind.queue, exchange = %unbind.exchange, error = %e, "cannot unbind the retired subscription's queue; it goes on filling");
                }
            }
        }
    }
}

/// What a consumer needs to (re)open its channel.
struct ConsumerSpec {
    backlogs: Arc<fnbroker_core::backlog::Backlogs>,
    link: Arc<kit::Link>,
    connector: String,
    dial: Dial,
    queue: String,
    declare: Option<AmqpDeclare>,
    prefetch: u16,
}

impl ConsumerSpec {
    /// The connection cannot be opened: a warning naming the connector (retried with backoff).
    fn warn_unreachable(&self, error: &str) {
        let hint = if self.dial.is_tls() {
            "; with TLS, check that `tls.ca` signed the server's certificate and that the client certificate is accepted"
        } else {
            ""
        };
        self.link
            .failed(&format!("queue `{}`: {error}", self.queue), hint);
    }

    /// A channel of `conn` with prefetch, the declarations, and the consumer.
    async fn open(&self, conn: Connection) -> Result<Opened, String> {
        let channel = match conn.create_channel().await {
            Ok(channel) => channel,
            Err(e) => {
                dial::close(conn, &[], "fnbroker: cannot open a channel").await;
                return Err(e.to_string());
            }
        };
        match self.consume_on(&channel).await {
            Ok(consumer) => Ok(Opened {
                conn,
                channel,
                consumer,
            }),
            Err(e) => {
                dial::close(conn, &[&channel], "fnbroker: cannot consume").await;
                Err(e)
            }
        }
    }

    async fn consume_on(&self, channel: &Channel) -> Result<lapin::Consumer, String> {
        channel
            .basic_qos(self.prefetch, BasicQosOptions::default())
            .await
            .map_err(|e| e.to_string())?;
        if let Some(d) = &self.declare {
            declare(channel, &self.queue, d).await?;
        } else {
            channel
                .queue_declare(
                    self.queue.clone().into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await
                .map_err(|e| format!("queue `{}` is not there ({e}); declare it, or add `declare` to the trigger's `from`", self.queue))?;
        }
        channel
            .basic_consume(
                self.queue.clone().into(),
                format!("{}-{}", self.dial.connection_name(), self.queue).into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| format!("cannot consume `{}`: {e}", self.queue))
    }
}

/// A consuming channel and its connection.
struct Opened {
    conn: Connection,
    channel: Channel,
    consumer: lapin::Consumer,
}

impl Opened {
    /// Closes the channels, the depth watcher's first, then the connection (see `dial::close`).
    async fn close(self, watcher: Option<tokio::task::JoinHandle<()>>, reason: &str) {
        if let Some(watcher) = watcher {
            let _ = tokio::time::timeout(dial::CLOSE_TIMEOUT, watcher).await;
        }
        dial::close(self.conn, &[&self.channel], reason).await;
        drop(self.consumer);
    }
}

async fn declare(channel: &Channel, queue: &str, d: &AmqpDeclare) -> Result<(), String> {
    channel
        .queue_declare(
            queue.to_string().into(),
            QueueDeclareOptions {
                durable: d.durable,
                ..Default::default()
            },
            binding::arguments(&d.arguments),
        )
        .await
        .map_err(|e| format!("cannot declare queue `{queue}`: {e}"))?;
    if let Some(exchange) = &d.exchange {
        let kind = match d.kind.as_deref().unwrap_or("topic") {
            "direct" => ExchangeKind::Direct,
            "fanout" => ExchangeKind::Fanout,
            "headers" => ExchangeKind::Headers,
            "topic" => ExchangeKind::Topic,
            other => ExchangeKind::Custom(other.to_string()),
        };
        channel
            .exchange_declare(
                exchange.clone().into(),
                kind,
                ExchangeDeclareOptions {
                    durable: d.durable,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| format!("cannot declare exchange `{exchange}`: {e}"))?;
        channel
            .queue_bind(
                queue.to_string().into(),
                exchange.clone().into(),
                d.routing_key.clone().unwrap_or_else(|| "#".into()).into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| format!("cannot bind `{queue}` to `{exchange}`: {e}"))?;
    }
    Ok(())
}

/// Consumes, reconnecting whenever the connection or the channel goes away.
async fn consume(
    spec: ConsumerSpec,
    mut first: Option<Opened>,
    tx: mpsc::Sender<Incoming>,
    consuming: Arc<AtomicUsize>,
    stop: CancellationToken,
) {
    // Acknowledgements go out on a task this loop finishes before it closes the connection,
    // coalesced into `multiple` acks where they can be (see `acks`).
    let settler = acks::AmqpSettler::new(spec.connector.clone());
    let handout = settler.handout();
    let (acker, acks) = kit::Acker::new(settler);
    // The channel consumed when stopping, kept open: the acknowledgements still on their way
    // must go out on it (else RabbitMQ requeues what was delivered), and the depth watcher's.
    let mut last: Option<(Opened, Option<tokio::task::JoinHandle<()>>)> = None;
    let mut backoff = kit::Backoff::reconnect();
    // Deliveries taken from the queue, for the stall report.
    let taken = Arc::new(std::sync::atomic::AtomicU64::new(0));
    loop {
        let mut opened = match first.take() {
            Some(c) => c,
            None => {
                let opened = async {
                    let conn = spec.dial.connect().await.map_err(|e| e.to_string())?;
                    spec.open(conn).await
                };
                match opened.await {
                    Ok(c) => c,
                    Err(e) => {
                        spec.warn_unreachable(&e);
                        if kit::sleep_unless_stopped(&stop, backoff.next_delay()).await {
                            break;
                        }
                        continue;
                    }
                }
            }
        };
        backoff.reset();
        let generation = handout.reopened();
        let consumer_up = kit::Counted::new(&consuming);
        tracing::info!(connector = %spec.connector, queue = %spec.queue, "amqp consumer started");
        spec.link.connected();
        // The queue's depth, every few seconds, on a channel of its own.
        // (A passive declare: the messages ready, not those unacknowledged.)
        let watching = stop.child_token();
        let watcher = match opened.conn.create_channel().await {
            Err(_) => None,
            Ok(channel) => {
                let (queue, backlogs, taken) = (
                    spec.queue.clone(),
                    Arc::clone(&spec.backlogs),
                    Arc::clone(&taken),
                );
                let watching = watching.clone();
                Some(tokio::spawn(async move {
                    backlogs
                        .watch(&queue, &watching, || async {
                            let passive = QueueDeclareOptions {
                                passive: true,
                                ..Default::default()
                            };
                            let q = channel
                                .queue_declare(
                                    queue.as_str().into(),
                                    passive,
                                    FieldTable::default(),
                                )
                                .await
                                .ok()?;
                            Some((u64::from(q.message_count()), taken.load(Ordering::Relaxed)))
                        })
                        .await;
                    // Closed here, before the connection is (see `dial::close`).
                    dial::close_channel(&channel, "fnbroker: stopped watching").await;
                }))
            }
        };
        let stopping = loop {
            let next = tokio::select! {
                () = stop.cancelled() => break true,
                d = opened.consumer.next() => d,
            };
            let delivery = match next {
                Some(Ok(d)) => d,
                Some(Err(e)) => {
                    spec.link
                        .failed(&format!("consumer of `{}` lost: {e}", spec.queue), "");
                    break false;
                }
                None => {
                    spec.link.failed(
                        &format!("consumer of `{}` closed by the server", spec.queue),
                        "",
                    );
                    break false;
                }
            };
            let view = binding::Message {
                queue: &spec.queue,
                routing_key: delivery.routing_key.as_str(),
                properties: &delivery.properties,
                body: &delivery.data,
            };
            let (event, origin) = binding::decode(&spec.connector, &view);
            let key = kit::ordering_key(delivery.routing_key.as_str());
            taken.fetch_add(1, Ordering::Relaxed);
            let incoming = Incoming {
                event,
                origin,
                key,
                redeliveries: u32::from(delivery.redelivered),
                size: delivery.data.len(),
                ack: acker.handle(handout.delivery(
                    generation,
                    delivery.delivery_tag,
                    delivery.acker,
                )),
            };
            if tx.send(incoming).await.is_err() {
                break true;
            }
        };
        drop(consumer_up);
        watching.cancel();
        if stopping {
            last = Some((opened, watcher));
            break;
        }
        // Lost: what is left of the connection goes before the next one opens.
        opened.close(watcher, "fnbroker: consumer lost").await;
    }
    // Stopping: every handle the engine held was settled or dropped before the source was
    // closed; send their acknowledgements, then close the channels and the connection.
    drop(acker);
    acks.finish().await;
    if let Some((opened, watcher)) = last {
        opened.close(watcher, "fnbroker stopping").await;
    }
}

/// Publishes with confirms through a connection of its own, reconnecting when needed.
struct AmqpSink {
    connector: String,
    dial: Dial,
    exchange: String,
    prefix: String,
    channel: Mutex<Option<(Connection, Channel)>>,
}

impl AmqpSink {
    async fn channel(&self) -> Result<Channel, String> {
        let mut guard = self.channel.lock().await;
        if let Some((conn, ch)) = guard.as_ref()
            && conn.status().connected()
            && ch.status().connected()
        {
            return Ok(ch.clone());
        }
        let conn = self.dial.connect().await.map_err(|e| e.to_string())?;
        let ch = conn.create_channel().await.map_err(|e| e.to_string())?;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| e.to_string())?;
        *guard = Some((conn, ch.clone()));
        Ok(ch)
    }
}

#[async_trait]
impl Sink for AmqpSink {
    /// On the default exchange, a queue named `topic` must exist; on another, the exchange
    /// (its bindings cannot be asked for over AMQP 0-9-1: an unroutable publish says it later).
    async fn check(&self, topic: &str) -> Result<(), ConnectorError> {
        let permanent = |message: String| ConnectorError::permanent(&self.connector, message);
        // A passive declare that fails closes its channel: use one of its own.
        let conn = self.dial.connect().await.map_err(|e| {
            ConnectorError::io(&self.connector, format!("cannot connect: {e}")).caused_by(e)
        })?;
        let channel = conn
            .create_channel()
            .await
            .map_err(|e| ConnectorError::io(&self.connector, e.to_string()))?;
        let result = if self.exchange.is_empty() {
            channel
                .queue_declare(
                    topic.to_string().into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await
                .map(|_| ())
                .map_err(|e| {
                    permanent(format!(
                        "routing key `{topic}` on the default exchange: no queue `{topic}` ({e})"
                    ))
                })
        } else {
            channel
                .exchange_declare(
                    self.exchange.clone().into(),
                    ExchangeKind::Direct,
                    ExchangeDeclareOptions {
                        passive: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await
                .map_err(|e| permanent(format!("no exchange `{}` ({e})", self.exchange)))
        };
        dial::close(conn, &[&channel], "checked").await;
        result
    }

    async fn publish(&self, topic: &str, event: &Event) -> Result<(), ConnectorError> {
        let (body, props) = binding::encode(event, &self.prefix);
        self.send(topic, &body, props).await
    }

    async fn publish_plain(
        &self,
        topic: &str,
        data: &[u8],
        content_type: Option<&str>,
    ) -> Result<(), ConnectorError> {
        self.send(topic, data, binding::plain_properties(content_type))
            .await
    }
}

impl AmqpSink {
    /// Publishes with `mandatory` and waits for the publisher confirm.
    async fn send(
        &self,
        topic: &str,
        body: &[u8],
        props: lapin::BasicProperties,
    ) -> Result<(), ConnectorError> {
        let err = |message: String| {
            ConnectorError::io(
                &self.connector,
                format!(
                    "cannot publish to exchange `{}` with routing key `{topic}`: {message}",
                    self.exchange
                ),
            )
        };
        let channel = self.channel().await.map_err(err)?;
        let confirm = channel
            .basic_publish(
                ShortString::from(self.exchange.clone()),
                ShortString::from(topic.to_string()),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                body,
                props,
            )
            .await
            .map_err(|e| err(e.to_string()))?
            .await
            .map_err(|e| err(e.to_string()))?;
        match confirm {
            lapin::Confirmation::Ack(None) => Ok(()),
            lapin::Confirmation::Ack(Some(_)) => Err(ConnectorError::permanent(
                &self.connector,
                format!(
                    "cannot publish to exchange `{}` with routing key `{topic}`: unroutable, no queue is bound for it",
                    self.exchange
                ),
            )),
            lapin::Confirmation::Nack(_) => Err(err("the broker refused it (nack)".into())),
            lapin::Confirmation::NotRequested => Ok(()),
        }
    }
}
