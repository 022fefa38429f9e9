//! One face for rumqttc's two clients (MQTT 5 and 3.1.1): connect, poll events, subscribe,
//! acknowledge, publish.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::QoS as QoS5;
use rumqttc::v5::mqttbytes::v5::{
    Packet as Packet5, PubAckReason, PubCompReason, PublishProperties, SubscribeProperties,
};
use rumqttc::{Outgoing, QoS};

/// The capacity of the request queue between a client handle and its event loop (publishes,
/// acknowledgements, subscribes waiting for the loop).
const REQUEST_CAPACITY: usize = 64;

/// The most QoS 1/2 publishes of ours in flight on one MQTT 5 connection, whatever the broker
/// grants (Mosquitto grants 20): rumqttc's default is the protocol's 65,535, for which it
/// allocates a slot each up front, 13 MiB per connection (measured: an idle MQTT connector held
/// 15.6 MiB of anonymous memory, a NATS one 2.2). Past it, publishes wait for a PUBACK.
const OUTGOING_INFLIGHT: u16 = 256;

/// How to connect.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub(crate) client_id: String,
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) v5: bool,
    pub(crate) clean: bool,
    pub(crate) keep_alive: Duration,
    pub(crate) session_expiry: Duration,
    pub(crate) receive_maximum: u16,
    pub(crate) credentials: Option<(String, String)>,
    /// TLS, when the connection uses it.
    pub(crate) tls: Option<Arc<rustls::ClientConfig>>,
}

impl Options {
    fn transport(&self) -> rumqttc::Transport {
        match &self.tls {
            Some(config) => rumqttc::Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(
                Arc::clone(config),
            )),
            None => rumqttc::Transport::tcp(),
        }
    }
}

/// A received message and what acknowledging it needs.
#[derive(Debug, Clone)]
pub(crate) struct Received {
    pub(crate) topic: String,
    pub(crate) qos: u8,
    pub(crate) payload: Bytes,
    pub(crate) content_type: Option<String>,
    pub(crate) user_properties: Vec<(String, String)>,
    pub(crate) subscription_ids: Vec<usize>,
    pub(crate) token: AckToken,
}

/// The packet to acknowledge.
#[derive(Debug, Clone)]
pub(crate) enum AckToken {
    V5(rumqttc::v5::mqttbytes::v5::Publish),
    V3(rumqttc::Publish),
    /// Taken: the token moved to the acknowledger.
    None,
}

/// What the event loop reports, in both versions' terms.
#[derive(Debug)]
pub(crate) enum Ev {
    Connected {
        session_present: bool,
    },
    Message(Box<Received>),
    /// A publish of ours left with this packet id (0 for QoS 0).
    Sent(u16),
    /// The broker confirmed (or refused) a publish of ours.
    Confirmed {
        pkid: u16,
        error: Option<String>,
    },
    /// A PUBACK/PUBREC of ours went out (written to the connection).
    AckSent,
    /// The broker acknowledged a subscription.
    Subscribed,
    /// Our DISCONNECT went out (flushed): the connection is closed on purpose.
    Disconnected,
    Other,
}

#[derive(Clone)]
pub(crate) enum Client {
    V5(rumqttc::v5::AsyncClient),
    V3(rumqttc::AsyncClient),
}

pub(crate) enum EventLoop {
    V5(Box<rumqttc::v5::EventLoop>),
    V3(Box<rumqttc::EventLoop>),
}

fn qos3(q: u8) -> QoS {
    match q {
        0 => QoS::AtMostOnce,
        2 => QoS::ExactlyOnce,
        _ => QoS::AtLeastOnce,
    }
}

fn qos5(q: u8) -> QoS5 {
    match q {
        0 => QoS5::AtMostOnce,
        2 => QoS5::ExactlyOnce,
        _ => QoS5::AtLeastOnce,
    }
}

pub(crate) fn connect(o: &Options) -> (Client, EventLoop) {
    if o.v5 {
        let mut m = rumqttc::v5::MqttOptions::new(&o.client_id, &o.host, o.port);
        m.set_keep_alive(o.keep_alive)
            .set_clean_start(o.clean)
            .set_manual_acks(true)
            .set_receive_maximum(Some(o.receive_maximum))
            .set_outgoing_inflight_upper_limit(OUTGOING_INFLIGHT)
            .set_session_expiry_interval(if o.clean {
                None
            } else {
                Some(u32::try_from(o.session_expiry.as_secs()).unwrap_or(u32::MAX))
            });
        if let Some((u, p)) = &o.credentials {
            m.set_credentials(u, p);
        }
        m.set_transport(o.transport());
        let (c, e) = rumqttc::v5::AsyncClient::new(m, REQUEST_CAPACITY);
        (Client::V5(c), EventLoop::V5(Box::new(e)))
    } else {
        let mut m = rumqttc::MqttOptions::new(&o.client_id, &o.host, o.port);
        m.set_keep_alive(o.keep_alive)
            .set_clean_session(o.clean)
            .set_manual_acks(true);
        if let Some((u, p)) = &o.credentials {
            m.set_credentials(u, p);
        }
        m.set_transport(o.transport());
        let (c, e) = rumqttc::AsyncClient::new(m, REQUEST_CAPACITY);
        (Client::V3(c), EventLoop::V3(Box::new(e)))
    }
}

impl EventLoop {
    /// The next event; an error means the connection is gone (polling again reconnects).
    pub(crate) async fn poll(&mut self) -> Result<Ev, String> {
        match self {
            EventLoop::V5(e) => {
                use rumqttc::v5::Event;
                Ok(match e.poll().await.map_err(|e| e.to_string())? {
                    Event::Incoming(Packet5::ConnAck(c)) => Ev::Connected {
                        session_present: c.session_present,
                    },
                    Event::Incoming(Packet5::Publish(p)) => {
                        let props = p.properties.clone().unwrap_or_default();
                        Ev::Message(Box::new(Received {
                            topic: String::from_utf8_lossy(&p.topic).into_owned(),
                            qos: p.qos as u8,
                            payload: p.payload.clone(),
                            content_type: props.content_type,
                            user_properties: props.user_properties,
                            subscription_ids: props.subscription_identifiers,
                            token: AckToken::V5(p),
                        }))
                    }
                    Event::Incoming(Packet5::PubAck(a)) => Ev::Confirmed {
                        pkid: a.pkid,
                        error: (!matches!(
                            a.reason,
                            PubAckReason::Success | PubAckReason::NoMatchingSubscribers
                        ))
                        .then(|| format!("{:?}", a.reason)),
                    },
                    Event::Incoming(Packet5::PubComp(c)) => Ev::Confirmed {
                        pkid: c.pkid,
                        error: (!matches!(c.reason, PubCompReason::Success))
                            .then(|| format!("{:?}", c.reason)),
                    },
                    Event::Outgoing(Outgoing::Publish(pkid)) => Ev::Sent(pkid),
                    Event::Outgoing(Outgoing::PubAck(_) | Outgoing::PubRec(_)) => Ev::AckSent,
                    Event::Incoming(Packet5::SubAck(_)) => Ev::Subscribed,
                    Event::Outgoing(Outgoing::Disconnect) => Ev::Disconnected,
                    _ => Ev::Other,
                })
            }
            EventLoop::V3(e) => {
                use rumqttc::{Event, Packet};
                Ok(match e.poll().await.map_err(|e| e.to_string())? {
                    Event::Incoming(Packet::ConnAck(c)) => Ev::Connected {
                        session_present: c.session_present,
                    },
                    Event::Incoming(Packet::Publish(p)) => Ev::Message(Box::new(Received {
                        topic: p.topic.clone(),
                        qos: p.qos as u8,
                        payload: p.payload.clone(),
                        content_type: None,
                        user_properties: Vec::new(),
                        subscription_ids: Vec::new(),
                        token: AckToken::V3(p),
                    })),
                    Event::Incoming(Packet::PubAck(a)) => Ev::Confirmed {
                        pkid: a.pkid,
                        error: None,
                    },
                    Event::Incoming(Packet::PubComp(c)) => Ev::Confirmed {
                        pkid: c.pkid,
                        error: None,
                    },
                    Event::Outgoing(Outgoing::Publish(pkid)) => Ev::Sent(pkid),
                    Event::Outgoing(Outgoing::PubAck(_) | Outgoing::PubRec(_)) => Ev::AckSent,
                    Event::Incoming(Packet::SubAck(_)) => Ev::Subscribed,
                    Event::Outgoing(Outgoing::Disconnect) => Ev::Disconnected,
                    _ => Ev::Other,
                })
            }
        }
    }
}

impl Client {
    /// Subscribes to `filter`; on MQTT 5 with subscription identifier `id`.
    pub(crate) async fn subscribe(&self, filter: &str, qos: u8, id: usize) -> Result<(), String> {
        match self {
            Client::V5(c) => c
                .subscribe_with_properties(
                    filter,
                    qos5(qos),
                    SubscribeProperties {
                        id: Some(id),
                        user_properties: Vec::new(),
                    },
                )
                .await
                .map_err(|e| e.to_string()),
            Client::V3(c) => c
                .subscribe(filter, qos3(qos))
                .await
                .map_err(|e| e.to_string()),
        }
    }

    /// Unsubscribes from `filter`.
    pub(crate) async fn unsubscribe(&self, filter: &str) -> Result<(), String> {
        match self {
            Client::V5(c) => c.unsubscribe(filter).await.map_err(|e| e.to_string()),
            Client::V3(c) => c.unsubscribe(filter).await.map_err(|e| e.to_string()),
        }
    }

    /// Sends the PUBACK (QoS 1) or PUBREC (QoS 2) of a received message.
    pub(crate) async fn ack(&self, token: &AckToken) -> Result<(), String> {
        match (self, token) {
            (Client::V5(c), AckToken::V5(p)) => c.ack(p).await.map_err(|e| e.to_string()),
            (Client::V3(c), AckToken::V3(p)) => c.ack(p).await.map_err(|e| e.to_string()),
            (_, AckToken::None) => Err("no packet to acknowledge".into()),
            _ => Err("acknowledgement of another protocol version".into()),
        }
    }

    /// Queues a DISCONNECT behind everything queued before it.
    pub(crate) async fn disconnect(&self) -> Result<(), String> {
        match self {
            Client::V5(c) => c.disconnect().await.map_err(|e| e.to_string()),
            Client::V3(c) => c.disconnect().await.map_err(|e| e.to_string()),
        }
    }

    /// Queues a publish (it leaves when the event loop sends it).
    pub(crate) async fn publish(
        &self,
        topic: &str,
        qos: u8,
        payload: Vec<u8>,
        content_type: Option<String>,
        user_properties: Vec<(String, String)>,
    ) -> Result<(), String> {
        match self {
            Client::V5(c) => {
                let props = PublishProperties {
                    content_type,
                    user_properties,
                    ..Default::default()
                };
                c.publish_with_properties(topic, qos5(qos), false, payload, props)
                    .await
                    .map_err(|e| e.to_string())
            }
            Client::V3(c) => c
                .publish(topic, qos3(qos), false, payload)
                .await
                .map_err(|e| e.to_string()),
        }
    }
}
