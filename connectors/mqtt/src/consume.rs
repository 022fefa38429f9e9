//! The consuming connection of an MQTT connector: three tasks with one job each.
//!
//! - The **poller** owns rumqttc's event loop and does nothing but poll it and forward what it
//!   reports. rumqttc's rule is that the event loop must never wait on anything else: keep-alive
//!   pings, acknowledgements and reconnects all happen inside `poll`. So the poller never awaits
//!   a trigger's queue; it hands events to the dispatcher through an unbounded channel, which the
//!   broker's own in-flight window bounds for QoS 1 and 2 (MQTT 5's receive maximum, what the
//!   triggers can hold plus a headroom; Mosquitto's `max_inflight_messages` for 3.1.1). The poller also
//!   tells the acknowledger of every PUBACK/PUBREC written. QoS 0 messages beyond
//!   [`MAX_QUEUED_QOS0`] queued events are dropped there, as at-most-once allows.
//! - The **dispatcher** turns messages into events and waits for room in the triggers' queues
//!   (backpressure), subscribes again on every connect, and tracks readiness. A QoS 1/2 message
//!   holds a place in the connection's window from the moment it is handed to the triggers until
//!   its PUBACK/PUBREC was written. The window is what the triggers hold; the receive maximum
//!   is that plus a headroom of 1,024, so the PUBACKs the broker has not read yet use up the
//!   headroom before they reach Mosquitto's queue allowance beyond the receive maximum (see
//!   `receive_maximum` in the crate root).
//! - The **acknowledger** sends PUBACK (QoS 1) / PUBREC (QoS 2) in the order the messages were
//!   received, as MQTT 3.1.1 and 5 require (section 4.6), whatever order the engine settles them
//!   in: a settled message waits for the ones received before it. A message handed back
//!   (released at shutdown) is not acknowledged, so the broker sends it again on the next
//!   connection of the persistent session; the ones after it are acknowledged.
//!
//! Stopping: the dispatcher stops; the acknowledger finishes once every handle was settled or
//! dropped and every PUBACK was queued; then a DISCONNECT is queued behind them, and the poller
//! ends once it went out. So a clean stop acknowledges everything that finished.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fnbroker_core::kit;
use fnbroker_core::{AckHandle, Incoming, Settlement};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::binding;
use crate::client::{self, AckToken, Client, Ev, EventLoop, Options, Received};

/// QoS 0 messages are dropped by the poller while more events than this wait for the
/// dispatcher.
pub(crate) const MAX_QUEUED_QOS0: usize = 1024;

/// How long a stop waits for the DISCONNECT (and the PUBACKs before it) to go out.
const DISCONNECT_WAIT: Duration = Duration::from_secs(5);

/// The first and the longest wait before reconnecting.
pub(crate) const RECONNECT_MIN: Duration = Duration::from_secs(1);
pub(crate) const RECONNECT_MAX: Duration = Duration::from_secs(30);

/// One subscription of the connection.
#[derive(Clone)]
pub(crate) struct Sub {
    pub(crate) id: usize,
    pub(crate) filter: String,
    pub(crate) qos: u8,
    pub(crate) tx: mpsc::Sender<Incoming>,
}

/// A change of the subscriptions while the consumer runs (discovered triggers come and go, a
/// reload reopens or retires a subscription).
pub(crate) enum Control {
    /// Subscribe (now, and again on every connect).
    Add(Sub),
    /// Stop routing to this subscription, and keep its filter subscribed in the session: the
    /// subscription that takes its place (a reload reopening it) gets what the broker holds
    /// for it, and the messages it handed back.
    Detach(usize),
    /// Stop routing to this subscription; unsubscribe when no other has its filter.
    Remove(usize),
}

/// The running consumer; [`Consumer::stop`] ends it cleanly.
pub(crate) struct Consumer {
    stop: CancellationToken,
    dispatcher: JoinHandle<()>,
}

impl Consumer {
    /// Connects and starts the three tasks.
    pub(crate) fn start(
        name: String,
        options: &Options,
        subs: Vec<Sub>,
        ready: Arc<AtomicBool>,
        link: Arc<fnbroker_core::kit::Link>,
        control: mpsc::UnboundedReceiver<Control>,
        window: usize,
    ) -> Self {
        let (client, events) = client::connect(options);
        let stop = CancellationToken::new();
        let (ev_tx, ev_rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let poller_done = CancellationToken::new();
        let (ack_tx, ack_rx) = mpsc::unbounded_channel();
        let poller = tokio::spawn(poll(
            name.clone(),
            events,
            ev_tx,
            ack_tx.downgrade(),
            Arc::clone(&queued),
            poller_done.clone(),
        ));
        let acks = tokio::spawn(acknowledge(name.clone(), client.clone(), ack_rx));
        let (again_tx, again_rx) = mpsc::unbounded_channel();
        let dispatcher = tokio::spawn(dispatch_loop(Dispatcher {
            name,
            v5: options.v5,
            persistent: !options.clean,
            said_new_session: false,
            subs,
            ready,
            link,
            control,
            client,
            ack_tx,
            window: Arc::new(Semaphore::new(window.max(1))),
            next_seq: 0,
            again_tx,
            again_rx,
            held: Vec::new(),
            detached: Vec::new(),
            former: Vec::new(),
            events: ev_rx,
            queued,
            stop: stop.clone(),
            acks,
            poller,
            poller_done,
        }));
        Self { stop, dispatcher }
    }

    /// Stops consuming, sends the acknowledgements of everything settled, disconnects.
    pub(crate) async fn stop(self) {
        self.stop.cancel();
        if let Err(e) = self.dispatcher.await {
            tracing::error!(error = %e, "the mqtt dispatcher failed");
        }
    }
}

/// Polls the event loop and forwards every event; never waits on anything else.
async fn poll(
    name: String,
    mut events: EventLoop,
    tx: mpsc::UnboundedSender<Result<Ev, String>>,
    acks: mpsc::WeakUnboundedSender<AckCommand>,
    queued: Arc<AtomicUsize>,
    done: CancellationToken,
) {
    let mut backoff = fnbroker_core::kit::Backoff::new(RECONNECT_MIN, RECONNECT_MAX);
    loop {
        let ev = tokio::select! {
            () = done.cancelled() => return,
            ev = events.poll() => ev,
        };
        match ev {
            Ok(Ev::Disconnected) => return,
            Ok(Ev::Message(m))
                if m.qos == 0 && queued.load(Ordering::Acquire) > MAX_QUEUED_QOS0 =>
            {
                tracing::debug!(connector = %name, topic = %m.topic, "QoS 0 message dropped: the triggers are behind");
            }
            // Straight to the acknowledger, not through the dispatcher: a dispatcher waiting for
            // a window place waits for exactly these.
            Ok(Ev::AckSent) => {
                if let Some(acks) = acks.upgrade() {
                    let _ = acks.send(AckCommand::Sent);
                }
            }
            Ok(ev) => {
                if matches!(ev, Ev::Connected { .. }) {
                    backoff.reset();
                    if let Some(acks) = acks.upgrade() {
                        let _ = acks.send(AckCommand::Reconnected);
                    }
                }
                queued.fetch_add(1, Ordering::AcqRel);
                if tx.send(Ok(ev)).is_err() {
                    return;
                }
            }
            Err(e) => {
                let wait = backoff.next_delay();
                let _ = tx.send(Err(format!("{e} (reconnecting in {wait:?})")));
                if fnbroker_core::kit::sleep_unless_stopped(&done, wait).await {
                    return;
                }
            }
        }
    }
}

/// What the acknowledger hears.
enum AckCommand {
    /// A QoS 1/2 message was received, as number `seq` of this connection; its place in the
    /// window is given back once its acknowledgement went out (or it was passed over).
    Received(u64, Box<AckToken>, OwnedSemaphorePermit),
    /// Message `seq` was settled: acknowledge it (finished) or not (handed back).
    Settled(u64, bool),
    /// The event loop wrote the oldest PUBACK/PUBREC still on its way.
    Sent,
    /// The connection was made again: the acknowledgements on their way will not go out.
    Reconnected,
}

/// Received QoS 1/2 messages in receive order, each with its verdict once settled: the
/// acknowledgements come out in receive order, for the settled prefix.
struct InOrder<T> {
    queue: BTreeMap<u64, (T, Option<bool>)>,
}

impl<T> InOrder<T> {
    fn new() -> Self {
        Self {
            queue: BTreeMap::new(),
        }
    }

    fn received(&mut self, seq: u64, token: T) {
        self.queue.insert(seq, (token, None));
    }

    /// Records a verdict; returns the tokens to acknowledge now, in receive order (a message
    /// handed back is passed over: the broker sends it again on the next connection).
    /// (A token travels with its window place, which the acknowledger gives back once the
    /// acknowledgement was written, or at once for a message passed over.)
    fn settled(&mut self, seq: u64, ack: bool) -> Vec<T> {
        if let Some(entry) = self.queue.get_mut(&seq) {
            entry.1 = Some(ack);
        }
        let mut out = Vec::new();
        while let Some(entry) = self.queue.first_entry() {
            let Some(ack) = entry.get().1 else { break };
            let (token, _) = entry.remove();
            if ack {
                out.push(token);
            }
        }
        out
    }
}

/// Sends PUBACK/PUBREC in receive order (see the module documentation).
async fn acknowledge(name: String, client: Client, mut rx: mpsc::UnboundedReceiver<AckCommand>) {
    let mut order = InOrder::new();
    // The window places of the acknowledgements queued to the event loop, oldest first: it
    // writes them in that order, and each one written gives its place back.
    let mut on_the_way = std::collections::VecDeque::new();
    while let Some(command) = rx.recv().await {
        match command {
            AckCommand::Received(seq, token, place) => order.received(seq, (token, place)),
            AckCommand::Settled(seq, ack) => {
                for (token, place) in order.settled(seq, ack) {
                    match client.ack(&token).await {
                        Ok(()) => on_the_way.push_back(place),
                        Err(e) => {
                            tracing::warn!(connector = %name, error = %e, "cannot acknowledge; the broker will redeliver");
                        }
                    }
                }
            }
            AckCommand::Sent => {
                on_the_way.pop_front();
            }
            AckCommand::Reconnected => on_the_way.clear(),
        }
    }
}

struct Dispatcher {
    name: String,
    v5: bool,
    /// The session outlives the connection (clean start off).
    persistent: bool,
    /// Whether the warning about a new session in a shared group was given.
    said_new_session: bool,
    subs: Vec<Sub>,
    ready: Arc<AtomicBool>,
    link: Arc<fnbroker_core::kit::Link>,
    control: mpsc::UnboundedReceiver<Control>,
    client: Client,
    ack_tx: mpsc::UnboundedSender<AckCommand>,
    /// Places for the QoS 1/2 messages handed to the triggers and not yet acknowledged.
    window: Arc<Semaphore>,
    next_seq: u64,
    /// Messages handed back by the engine while the connection lives (see [`Again`]).
    again_tx: mpsc::UnboundedSender<Again>,
    again_rx: mpsc::UnboundedReceiver<Again>,
    /// Handed-back messages that no subscription routes now, kept (with their window places)
    /// for the subscription that takes over their filter.
    held: Vec<Again>,
    /// Subscriptions detached and still subscribed in the session, with their filters.
    detached: Vec<(usize, String)>,
    /// Every subscription ever detached, with its filter: the broker may still tag messages
    /// with its identifier for a moment after the one that reopened it subscribed.
    former: Vec<(usize, String)>,
    events: mpsc::UnboundedReceiver<Result<Ev, String>>,
    queued: Arc<AtomicUsize>,
    stop: CancellationToken,
    acks: JoinHandle<()>,
    poller: JoinHandle<()>,
    poller_done: CancellationToken,
}

/// Dispatches until asked to stop, then finishes the acknowledgements and disconnects.
async fn dispatch_loop(mut d: Dispatcher) {
    // Ready once every subscription of this connection was acknowledged.
    let mut unacknowledged = d.subs.len();
    loop {
        let ev = tokio::select! {
            () = d.stop.cancelled() => break,
            Some(change) = d.control.recv() => {
                d.change(change, &mut unacknowledged).await;
                continue;
            }
            Some(again) = d.again_rx.recv() => {
                d.redispatch(again);
                continue;
            }
            ev = d.events.recv() => match ev {
                Some(ev) => ev,
                None => break,
            },
        };
        d.queued.fetch_sub(1, Ordering::AcqRel);
        match ev {
            Ok(Ev::Subscribed) => {
                unacknowledged = unacknowledged.saturating_sub(1);
                if unacknowledged == 0 {
                    d.ready.store(true, Ordering::Release);
                }
            }
            Ok(Ev::Connected { session_present }) => {
                unacknowledged = d.subs.len();
                tracing::info!(connector = %d.name, session_present, "mqtt connected; subscribing");
                if !session_present && d.persistent && !d.said_new_session {
                    d.warn_new_shared_session();
                }
                d.link.connected();
                // The acknowledgements of the old connection's messages are void: the broker
                // sends those messages again on this one.
                d.next_seq = d.next_seq.saturating_add(1 << 32);
                // Held messages were received on the old connection: the broker sends them
                // again on this one (unacknowledged), so the held copies are passed over.
                for again in std::mem::take(&mut d.held) {
                    let _ = d.ack_tx.send(AckCommand::Settled(again.seq, false));
                }
                for s in &d.subs {
                    if let Err(e) = d.client.subscribe(&s.filter, s.qos, s.id).await {
                        tracing::warn!(connector = %d.name, filter = %s.filter, error = %e, "cannot subscribe");
                    }
                }
            }
            Ok(Ev::Message(msg)) => {
                // A QoS 1/2 message first takes a place in the window. While it waits, the
                // subscriptions may change and handed-back messages come in: a subscription
                // reopened by a reload must be able to take over the held messages that fill
                // the window, or nothing would ever give a place back.
                let place = if msg.qos > 0 {
                    loop {
                        tokio::select! {
                            () = d.stop.cancelled() => break None,
                            Some(change) = d.control.recv() => {
                                d.change(change, &mut unacknowledged).await;
                            }
                            Some(again) = d.again_rx.recv() => d.redispatch(again),
                            // The semaphore is never closed.
                            place = Arc::clone(&d.window).acquire_owned() => break place.ok(),
                        }
                    }
                } else {
                    None
                };
                if msg.qos > 0 && place.is_none() {
                    break;
                }
                let stop = d.stop.clone();
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = d.dispatch(*msg, place) => {}
                }
            }
            Ok(_) => {}
            Err(e) => {
                d.ready.store(false, Ordering::Release);
                d.link.failed(&e, "");
            }
        }
    }
    d.ready.store(false, Ordering::Release);
    // Every handle was settled or dropped before the connector was stopped: once the
    // acknowledger has queued their PUBACKs, a DISCONNECT goes out behind them.
    let Dispatcher {
        name,
        client,
        ack_tx,
        acks,
        poller,
        poller_done,
        again_rx,
        held,
        ..
    } = d;
    // From now on a message handed back is passed over: not acknowledged, the session sends
    // it again on the next connection. So are the ones held for a subscription, and the ones
    // handed back while the loop stopped (a delivery cancelled by the stop hands its message
    // back): each needs its verdict, or the acknowledgements of every message received after
    // it, delivered and finished, would wait behind it and never go out (the broker would send
    // them again: duplicates after a clean stop).
    let mut again_rx = again_rx;
    again_rx.close();
    while let Ok(again) = again_rx.try_recv() {
        let _ = ack_tx.send(AckCommand::Settled(again.seq, false));
    }
    drop(again_rx);
    for again in held {
        let _ = ack_tx.send(AckCommand::Settled(again.seq, false));
    }
    drop(ack_tx);
    if let Err(e) = acks.await {
        tracing::error!(connector = %name, error = %e, "the mqtt acknowledger failed");
    }
    if let Err(e) = client.disconnect().await {
        tracing::debug!(connector = %name, error = %e, "cannot disconnect");
        poller_done.cancel();
    }
    // The poller ends once the DISCONNECT (behind every PUBACK) went out; a broker that is
    // away gets no more than a few seconds of waiting.
    if tokio::time::timeout(DISCONNECT_WAIT, poller).await.is_err() {
        tracing::debug!(connector = %name, "the DISCONNECT did not go out in time");
        poller_done.cancel();
    }
}

impl Dispatcher {
    /// Said once, when the broker had no session for this client id and the connection joins
    /// shared subscriptions: a session that a replica left there under another client id (a
    /// changed `client_id` or host name) goes on taking its share of every group's messages,
    /// which wait for that client id, until its session expiry ends.
    fn warn_new_shared_session(&mut self) {
        let groups: Vec<&str> = self
            .subs
            .iter()
            .filter_map(|s| s.filter.strip_prefix("$share/"))
            .filter_map(|rest| rest.split_once('/').map(|(group, _)| group))
            .collect();
        if groups.is_empty() {
            return;
        }
        self.said_new_session = true;
        tracing::warn!(connector = %self.name, ?groups, "a new MQTT session joins shared subscriptions: if this replica ran before under another client id, its old session still takes a share of the messages (held for that client id) until its session_expiry ends; keep client ids stable, or the expiry short");
    }

    /// Adds or removes a subscription while connected (or not: a connect subscribes to all).
    async fn change(&mut self, change: Control, unacknowledged: &mut usize) {
        match change {
            Control::Add(s) => {
                // Not ready until the broker acknowledged it: messages sent before are not
                // routed to it.
                *unacknowledged += 1;
                self.ready.store(false, Ordering::Release);
                if let Err(e) = self.client.subscribe(&s.filter, s.qos, s.id).await {
                    tracing::warn!(connector = %self.name, filter = %s.filter, error = %e, "cannot subscribe");
                }
                self.detached.retain(|(_, filter)| *filter != s.filter);
                self.subs.push(s);
                // What a subscription with this filter handed back is this one's now.
                for again in std::mem::take(&mut self.held) {
                    self.redispatch(again);
                }
            }
            Control::Detach(id) => {
                if let Some(pos) = self.subs.iter().position(|s| s.id == id) {
                    let gone = self.subs.remove(pos);
                    self.former.push((gone.id, gone.filter.clone()));
                    if !self.subs.iter().any(|s| s.filter == gone.filter) {
                        self.detached.push((gone.id, gone.filter));
                    }
                }
            }
            Control::Remove(id) => {
                let Some(pos) = self.subs.iter().position(|s| s.id == id) else {
                    return;
                };
                let gone = self.subs.remove(pos);
                // Another subscription with the filter keeps it; MQTT 5 then tags its messages
                // with the identifier of the last SUBSCRIBE, so subscribe again with a live one.
                let result = match self.subs.iter().find(|s| s.filter == gone.filter) {
                    Some(other) => {
                        *unacknowledged += 1;
                        self.client
                            .subscribe(&other.filter, other.qos, other.id)
                            .await
                    }
                    None => self.client.unsubscribe(&gone.filter).await,
                };
                if let Err(e) = result {
                    tracing::warn!(connector = %self.name, filter = %gone.filter, error = %e, "cannot change the subscription");
                }
                // Held messages that no subscription wants any more are treated as a message
                // for no trigger is: acknowledged.
                let (wanted, unwanted): (Vec<Again>, Vec<Again>) = std::mem::take(&mut self.held)
                    .into_iter()
                    .partition(|a| self.wanted(&a.topic));
                self.held = wanted;
                if !unwanted.is_empty() {
                    tracing::info!(connector = %self.name, filter = %gone.filter, messages = unwanted.len(), "handed-back messages of an unsubscribed filter acknowledged: no trigger wants them");
                }
                for again in unwanted {
                    let _ = self.ack_tx.send(AckCommand::Settled(again.seq, true));
                }
            }
        }
    }

    /// Delivers a handed-back message again, to the subscriptions that route its topic now;
    /// with none, it is held for the one that takes over its filter.
    fn redispatch(&mut self, mut again: Again) {
        if !again.delay.is_zero() {
            let delay = std::mem::take(&mut again.delay);
            let tx = self.again_tx.clone();
            // Weak: a sleeping retry does not hold the acknowledger (and so the stop) open.
            let acks = self.ack_tx.downgrade();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                if let Err(mpsc::error::SendError(again)) = tx.send(again)
                    && let Some(acks) = acks.upgrade()
                {
                    // Stopping: passed over, so the messages after it are acknowledged.
                    let _ = acks.send(AckCommand::Settled(again.seq, false));
                }
            });
            return;
        }
        let targets: Vec<&Sub> = self
            .subs
            .iter()
            .filter(|s| !s.tx.is_closed() && binding::topic_matches(&s.filter, &again.topic))
            .collect();
        if targets.is_empty() {
            if self.wanted(&again.topic) {
                self.held.push(again);
            } else {
                tracing::debug!(connector = %self.name, topic = %again.topic, "handed-back message of an unsubscribed filter acknowledged: no trigger wants it");
                let _ = self.ack_tx.send(AckCommand::Settled(again.seq, true));
            }
            return;
        }
        again.redeliveries = again.redeliveries.saturating_add(1);
        for (tx, message) in deliver_qos1(&self.ack_tx, &self.again_tx, again, &targets) {
            // A full queue is waited for off the dispatcher, which must go on polling.
            tokio::spawn(async move {
                let _ = tx.send(message).await;
            });
        }
    }

    /// Whether a subscription of the connection (routed, closing, or detached and still
    /// subscribed in the session) has a filter for `topic`.
    fn wanted(&self, topic: &str) -> bool {
        self.subs
            .iter()
            .map(|s| &s.filter)
            .chain(self.detached.iter().map(|(_, f)| f))
            .any(|f| binding::topic_matches(f, topic))
    }

    /// Whether `msg` is for a subscription detached from its queue but still subscribed in the
    /// session (a reload reopening it): held for the one that takes its place, not dropped.
    fn for_detached(&self, msg: &Received) -> bool {
        self.detached.iter().any(|(id, filter)| {
            msg.subscription_ids.contains(id) || binding::topic_matches(filter, &msg.topic)
        })
    }

    /// Hands a message to every subscription it is for, with one acknowledgement for all of
    /// them; waits while a trigger's queue is full.
    /// `place` is the message's place in the window (QoS 1/2).
    async fn dispatch(&mut self, mut msg: Received, place: Option<OwnedSemaphorePermit>) {
        let token = std::mem::replace(&mut msg.token, AckToken::None);
        let targets: Vec<&Sub> = if !msg.subscription_ids.is_empty() {
            // Subscriptions with one filter are one at the broker, which names one of them.
            // A message still tagged with a detached subscription's identifier (sent before
            // the broker took the SUBSCRIBE of the one that reopened it) goes by its filter.
            let filters: Vec<&str> = self
                .subs
                .iter()
                .map(|s| (s.id, s.filter.as_str()))
                .chain(self.former.iter().map(|(id, f)| (*id, f.as_str())))
                .filter(|(id, _)| msg.subscription_ids.contains(id))
                .map(|(_, f)| f)
                .collect();
            self.subs
                .iter()
                .filter(|s| filters.contains(&s.filter.as_str()))
                .collect()
        } else {
            self.subs
                .iter()
                .filter(|s| binding::topic_matches(&s.filter, &msg.topic))
                .collect()
        };
        let seq = if let Some(place) = place {
            let seq = self.next_seq;
            self.next_seq += 1;
            let _ = self
                .ack_tx
                .send(AckCommand::Received(seq, Box::new(token), place));
            Some(seq)
        } else {
            None
        };
        let hold = targets.is_empty() && seq.is_some() && self.for_detached(&msg);
        if targets.is_empty() && !hold {
            tracing::debug!(connector = %self.name, topic = %msg.topic, "no trigger for this message; acknowledging it");
            if let Some(seq) = seq {
                let _ = self.ack_tx.send(AckCommand::Settled(seq, true));
            }
            return;
        }
        let view = binding::Message {
            topic: &msg.topic,
            payload: &msg.payload,
            content_type: msg.content_type.as_deref(),
            user_properties: &msg.user_properties,
            v5: self.v5,
        };
        let (event, origin) = binding::decode(&self.name, &view);
        let key = kit::ordering_key(&msg.topic);
        let size = msg.payload.len();
        let Some(seq) = seq else {
            // At-most-once: a full queue drops rather than hold the others.
            for sub in targets {
                let incoming = Incoming {
                    event: event.clone(),
                    origin: origin.clone(),
                    key,
                    redeliveries: 0,
                    size,
                    ack: AckHandle::none(),
                };
                if sub.tx.try_send(incoming).is_err() {
                    tracing::debug!(connector = %self.name, topic = %msg.topic, "QoS 0 message dropped: the trigger is full");
                }
            }
            return;
        };
        let again = Again {
            seq,
            topic: msg.topic,
            event,
            origin,
            key,
            size,
            redeliveries: 0,
            delay: Duration::ZERO,
        };
        if hold {
            self.held.push(again);
            return;
        }
        let waits = deliver_qos1(&self.ack_tx, &self.again_tx, again, &targets);
        for (tx, incoming) in waits {
            if tx.send(incoming).await.is_err() {
                // The subscription closed meanwhile: the dropped handle hands the message back.
            }
        }
    }
}

/// A QoS 1/2 message as it was handed to the triggers, kept until it is settled: a message the
/// engine hands back (a reply or dead letter that could not be published, a subscription
/// closed by a reload with the message in flight) is delivered again on the same connection,
/// because MQTT redelivers an unacknowledged message only on the next connection of the
/// session. It keeps its place in the receive order and in the window until then.
struct Again {
    seq: u64,
    topic: String,
    event: fnbroker_core::Event,
    origin: fnbroker_core::Origin,
    key: u64,
    size: usize,
    redeliveries: u32,
    /// How long to wait before delivering it again (a retry's delay).
    delay: Duration,
}

/// Hands `again` to `targets` with one acknowledgement for all of them. A target whose queue
/// has room takes it at once; the others are returned, to be awaited (backpressure).
fn deliver_qos1(
    ack_tx: &mpsc::UnboundedSender<AckCommand>,
    again_tx: &mpsc::UnboundedSender<Again>,
    again: Again,
    targets: &[&Sub],
) -> Vec<(mpsc::Sender<Incoming>, Incoming)> {
    let incoming = |again: &Again, ack| Incoming {
        event: again.event.clone(),
        origin: again.origin.clone(),
        key: again.key,
        redeliveries: again.redeliveries,
        size: again.size,
        ack,
    };
    let mut made = Vec::with_capacity(targets.len());
    let shared = Arc::new(Pending {
        remaining: AtomicUsize::new(targets.len()),
        handed_back: Mutex::new(None),
        ack_tx: Mutex::new(Some(ack_tx.clone())),
        again_tx: again_tx.clone(),
        again: Mutex::new(None),
    });
    for _ in targets {
        let part = Arc::clone(&shared);
        made.push(AckHandle::new(move |s| part.settle(&s)));
    }
    let messages: Vec<Incoming> = made.into_iter().map(|ack| incoming(&again, ack)).collect();
    if let Ok(mut slot) = shared.again.lock() {
        *slot = Some(again);
    }
    let mut waits = Vec::new();
    for (sub, message) in targets.iter().zip(messages) {
        match sub.tx.try_send(message) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(message)) => waits.push((sub.tx.clone(), message)),
            // Closed: the dropped handle hands the message back.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
    waits
}

/// One received message shared by the subscriptions it went to: acknowledged once all of them
/// finished it; delivered again if one handed it back.
struct Pending {
    remaining: AtomicUsize,
    /// Set when a part was handed back: the longest delay asked for.
    handed_back: Mutex<Option<Duration>>,
    ack_tx: Mutex<Option<mpsc::UnboundedSender<AckCommand>>>,
    again_tx: mpsc::UnboundedSender<Again>,
    again: Mutex<Option<Again>>,
}

impl Pending {
    fn settle(&self, s: &Settlement) {
        let delay = match s {
            Settlement::Released => Some(Duration::ZERO),
            Settlement::Retry { delay } => Some(*delay),
            Settlement::Delivered { .. } | Settlement::Failed { .. } => None,
        };
        if let (Some(delay), Ok(mut back)) = (delay, self.handed_back.lock()) {
            *back = Some(back.map_or(delay, |d| d.max(delay)));
        }
        if self.remaining.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        let Some(tx) = self.ack_tx.lock().ok().and_then(|mut t| t.take()) else {
            return;
        };
        let Some(mut again) = self.again.lock().ok().and_then(|mut a| a.take()) else {
            return;
        };
        let seq = again.seq;
        match self.handed_back.lock().ok().and_then(|b| *b) {
            None => {
                let _ = tx.send(AckCommand::Settled(seq, true));
            }
            Some(delay) => {
                again.delay = delay;
                // The dispatcher is gone (stopping): passed over, the session sends it again
                // on the next connection.
                if self.again_tx.send(again).is_err() {
                    let _ = tx.send(AckCommand::Settled(seq, false));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acknowledgements_leave_in_receive_order() {
        let mut order = InOrder::new();
        for seq in 1..=4 {
            order.received(seq, seq);
        }
        // Settled 3, then 2: nothing leaves while 1 is unsettled.
        assert!(order.settled(3, true).is_empty());
        assert!(order.settled(2, true).is_empty());
        assert_eq!(order.settled(1, true), vec![1, 2, 3]);
        // A message handed back is passed over, not acknowledged, and holds nothing.
        order.received(5, 5);
        assert!(order.settled(5, true).is_empty());
        assert_eq!(order.settled(4, false), vec![5]);
    }
}
