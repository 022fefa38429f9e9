//! The Kafka source: one consumer-group member per subscription, polled on a thread of its own.
//!
//! librdkafka expects its consumer to be polled at least every `max.poll.interval.ms` whatever
//! the application is doing, or the member is evicted from its group; rebalance callbacks and
//! offset commits run inside that poll, and a synchronous commit blocks. So the consumer lives on
//! a blocking thread, never on a runtime worker, and is polled all the time:
//!
//! - a record goes to the engine's channel if it has room; if not, it waits in a small stash
//!   that is handed out as room appears; if the engine stays full for [`PAUSE_AFTER`], the
//!   stashed partitions are **paused** (backpressure without leaving the poll loop) and resumed
//!   once the stash handed their records out. The stash holds about one poll's worth of records
//!   per assigned partition;
//! - settlements arrive on a channel and move the offset tracker; finished prefixes are committed
//!   every `commit_interval`, synchronously when partitions are revoked and at the end;
//! - a record handed back for redelivery while running ([`Settlement::Retry`]: its reply or dead
//!   letter could not be published) would hold its partition's commits until a restart, so the
//!   partition is **rewound** to it (seek): it and what followed are delivered again;
//! - a partition that is assigned, has records beyond its position and delivers nothing for
//!   [`STALL_AFTER`] while not paused is **stalled** (a broker that returns nothing to a fetch,
//!   as tansu's memory storage does from inside a record batch): it is logged, counted, and
//!   recovered by seeking to its position;
//! - a member that holds **no partition** of its topics while records wait and the group
//!   commits none for longer than the session timeout is **starved**: another member holds the
//!   partitions without consuming them (one killed and restarted within the session timeout, a
//!   zombie, or a broker that does not give a dead member's partitions back, as tansu 0.6 does
//!   not). It is said once at WARN with the group, and the topic's backlog (records waiting
//!   after the group's committed offsets) is reported, so `/readyz` lists it as stuck and
//!   `fnbroker_consumer_stalled_seconds` grows.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fnbroker_core::kit::ChannelSource;
use fnbroker_core::{AckHandle, Incoming, Settlement};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::binding::{self, Record};
use crate::offsets::{Partition, Tracker};

/// How long one poll waits for a record when there is none.
const POLL_TIMEOUT: Duration = Duration::from_millis(100);
/// How long records may wait for room in the engine before their partitions are paused (and
/// the longest time between two polls while the engine is full).
const PAUSE_AFTER: Duration = Duration::from_millis(500);
/// How long an assigned partition with records beyond its position may deliver nothing.
pub(crate) const STALL_AFTER: Duration = Duration::from_secs(30);
/// At most this many records that librdkafka has ready are decoded before they are handed to
/// the engine together.
const HAND_OFF_BATCH: usize = 64;
/// How long a seek or a watermark query may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// The end of one message, sent by its acknowledgement handle.
struct Settled {
    partition: Partition,
    generation: u64,
    offset: i64,
    outcome: Outcome,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Delivered, dead-lettered or dropped: the commit may move past it.
    Finished,
    /// Handed back while running: deliver it again.
    Again,
    /// Released at shutdown: not committed, redelivered after a restart.
    Released,
}

/// The consumer's context: rebalance callbacks commit what finished before partitions go, and
/// client errors set the readiness.
pub(crate) struct Context {
    pub(crate) connector: String,
    pub(crate) tracker: Arc<Mutex<Tracker>>,
    pub(crate) ready: Arc<AtomicBool>,
    /// Partitions revoked since the poll loop last looked: their stashed records are dropped.
    pub(crate) revoked: Mutex<Vec<Partition>>,
    /// Stalled partitions found and recovered, for the logs and the tests.
    pub(crate) stalls: AtomicU64,
    /// OAUTHBEARER tokens, when the connector uses them.
    pub(crate) oauth: Option<Arc<crate::oauth::TokenSource>>,
    /// The connection's health, shared by the connector's consumers.
    pub(crate) link: Arc<fnbroker_core::kit::Link>,
    /// Consumer lag per partition, from librdkafka's statistics.
    pub(crate) backlogs: Arc<fnbroker_core::backlog::Backlogs>,
}

impl Context {
    /// Connected: ready, and the link says so once (not per message).
    pub(crate) fn up(&self) {
        if !self.ready.swap(true, Ordering::AcqRel) {
            self.link.connected();
        }
    }
}

impl ClientContext for Context {
    const ENABLE_REFRESH_OAUTH_TOKEN: bool = true;

    fn generate_oauth_token(
        &self,
        _: Option<&str>,
    ) -> Result<rdkafka::client::OAuthToken, Box<dyn std::error::Error>> {
        crate::oauth::token_for(self.oauth.as_ref())
    }

    /// Every `statistics.interval.ms`: the lag of each assigned partition (high watermark minus
    /// committed offset), and whether records are taken from it (the application offset moves).
    fn stats(&self, statistics: rdkafka::Statistics) {
        for (topic, t) in &statistics.topics {
            for (&partition, p) in &t.partitions {
                if partition < 0 {
                    continue;
                }
                // librdkafka's lag needs an offset committed to the broker; before the group's
                // first commit, the tracker's position (records taken but not finished count
                // as waiting: they are not done).
                let lag = if p.consumer_lag >= 0 {
                    Some(p.consumer_lag)
                } else {
                    let key: Partition = (Arc::from(topic.as_str()), partition);
                    let position = self.tracker.lock().ok().and_then(|t| t.position(&key));
                    position
                        .filter(|_| p.hi_offset >= 0)
                        .map(|pos| p.hi_offset.saturating_sub(pos).max(0))
                };
                match lag.filter(|_| p.desired) {
                    Some(lag) => self.backlogs.update(
                        topic,
                        Some(partition),
                        u64::try_from(lag).unwrap_or(0),
                        u64::try_from(p.app_offset).unwrap_or(0),
                    ),
                    None => self.backlogs.remove(topic, Some(partition)),
                }
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let transport = matches!(
            error.rdkafka_error_code(),
            Some(RDKafkaErrorCode::AllBrokersDown | RDKafkaErrorCode::BrokerTransportFailure)
        );
        if transport {
            // A warning for the first of a run, then a summary every 30 s: librdkafka reports
            // each broker's failure on its own, many times a second.
            self.ready.store(false, Ordering::Release);
            self.link.failed(&format!("{error}: {reason}"), "");
        } else {
            tracing::warn!(connector = %self.connector, %error, reason, "kafka client error");
        }
    }
}

impl ConsumerContext for Context {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(list) = rebalance else {
            return;
        };
        let revoked: Vec<Partition> = list
            .elements()
            .iter()
            .map(|e| (Arc::from(e.topic()), e.partition()))
            .collect();
        let commits = match self.tracker.lock() {
            Ok(mut t) => t.revoke(&revoked),
            Err(_) => Vec::new(),
        };
        tracing::info!(connector = %self.connector, partitions = revoked.len(), "partitions revoked");
        // On the poll thread: a synchronous commit blocks no runtime worker.
        if let Some(tpl) = to_list(&commits)
            && let Err(e) = consumer.commit(&tpl, CommitMode::Sync)
        {
            tracing::warn!(connector = %self.connector, error = %e, "commit on revoke failed; those messages will be redelivered");
        }
        if let Ok(mut r) = self.revoked.lock() {
            r.extend(revoked);
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(list) = rebalance {
            self.up();
            tracing::info!(connector = %self.connector, partitions = list.count(), "partitions assigned");
        }
    }
}

fn to_list(commits: &[(Partition, i64)]) -> Option<TopicPartitionList> {
    if commits.is_empty() {
        return None;
    }
    let mut tpl = TopicPartitionList::new();
    for ((topic, partition), offset) in commits {
        // Adding an offset to a fresh list only fails for an invalid offset, which ours are not.
        let _ = tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset));
    }
    Some(tpl)
}

/// The key of `partition` of `topic`, its topic name shared with every other key of the topic.
fn intern(topics: &mut HashSet<Arc<str>>, topic: &str, partition: i32) -> Partition {
    let name = match topics.get(topic) {
        Some(name) => Arc::clone(name),
        None => {
            let name: Arc<str> = Arc::from(topic);
            topics.insert(Arc::clone(&name));
            name
        }
    };
    (name, partition)
}

fn one(topic: &str, partition: i32) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, partition);
    tpl
}

/// Starts the poll thread behind a channel-backed source.
pub(crate) fn start(
    connector: String,
    consumer: BaseConsumer<Context>,
    tracker: Arc<Mutex<Tracker>>,
    buffer: usize,
    commit_interval: Duration,
    membership: Membership,
) -> ChannelSource {
    ChannelSource::spawn(buffer, move |tx, stop| async move {
        let polled = tokio::task::spawn_blocking(move || {
            Poller {
                connector,
                consumer,
                tracker,
                tx,
                stop,
                commit_interval,
                stash: VecDeque::new(),
                paused: HashSet::new(),
                last_seen: HashMap::new(),
                topics: HashSet::new(),
                membership,
                starved: None,
            }
            .run();
        })
        .await;
        if let Err(e) = polled {
            tracing::error!(error = %e, "the kafka poll thread failed");
        }
    })
}

struct Poller {
    connector: String,
    consumer: BaseConsumer<Context>,
    tracker: Arc<Mutex<Tracker>>,
    tx: mpsc::Sender<Incoming>,
    stop: CancellationToken,
    commit_interval: Duration,
    /// Records that found the engine's channel full, in arrival order, with their partition.
    stash: VecDeque<(Partition, Incoming)>,
    /// Partitions paused because a record of theirs waits in the stash.
    paused: HashSet<Partition>,
    /// When each partition last delivered a record (or was found caught up).
    last_seen: HashMap<Partition, Instant>,
    /// Every topic name seen, shared by the records' partition keys.
    topics: HashSet<Arc<str>>,
    /// The group and topics, for the starvation check.
    membership: Membership,
    /// Since when this member held no partition while the group took nothing.
    starved: Option<Starved>,
}

/// What a consumer is a member of.
pub(crate) struct Membership {
    /// The consumer group.
    pub(crate) group: String,
    /// The topics subscribed to.
    pub(crate) topics: Vec<String>,
    /// `session.timeout.ms`: how long the group waits for a silent member.
    pub(crate) session_timeout: Duration,
}

/// A run of checks in which this member held no partition.
struct Starved {
    /// When the group's committed offsets of each topic last moved, with their sum then.
    progress: HashMap<String, (i64, Instant)>,
    /// Whether the warning was given.
    warned: bool,
}

impl Poller {
    fn run(mut self) {
        let (settle_tx, mut settle_rx) = mpsc::unbounded_channel::<Settled>();
        let mut last_commit = Instant::now();
        let mut last_stall_check = Instant::now();
        let mut last_error: Option<(String, Instant)> = None;
        let mut batch = Vec::with_capacity(HAND_OFF_BATCH);
        while !self.stop.is_cancelled() && !self.tx.is_closed() {
            while let Ok(s) = settle_rx.try_recv() {
                self.settle(s);
            }
            self.forget_revoked();
            if last_commit.elapsed() >= self.commit_interval {
                self.commit(CommitMode::Async);
                self.probe_readiness();
                last_commit = Instant::now();
            }
            if last_stall_check.elapsed() >= STALL_AFTER / 3 {
                self.check_stalls();
                self.check_starved();
                last_stall_check = Instant::now();
            }
            let wait = if self.stash.is_empty() {
                POLL_TIMEOUT
            } else {
                // The engine is full: wait for room (handing the stash out as it comes), and
                // only if it stays full, pause the stashed partitions. Then poll without
                // waiting, for the callbacks and the group's heartbeat of the poll loop.
                self.wait_for_room(PAUSE_AFTER);
                if !self.stash.is_empty() {
                    self.pause_stashed();
                }
                Duration::ZERO
            };
            // What librdkafka has ready is decoded first and handed out together: the engine,
            // woken by the first, finds the rest waiting instead of being woken (a futex wake
            // and a context switch) for each record.
            let mut polled = self.consumer.poll(wait);
            while let Some(result) = polled {
                match result {
                    Ok(m) => {
                        self.consumer.context().up();
                        let partition = intern(&mut self.topics, m.topic(), m.partition());
                        let (partition, incoming) = self.incoming(&m, partition, &settle_tx);
                        match self.last_seen.get_mut(&partition) {
                            Some(seen) => *seen = Instant::now(),
                            None => {
                                self.last_seen.insert(partition.clone(), Instant::now());
                            }
                        }
                        batch.push((partition, incoming));
                    }
                    Err(e) => self.report(&e, &mut last_error),
                }
                if batch.len() >= HAND_OFF_BATCH {
                    break;
                }
                polled = self.consumer.poll(Duration::ZERO);
            }
            for (partition, incoming) in batch.drain(..) {
                self.offer(partition, incoming);
            }
        }
        // Stopping: records never handed out are released (not committed); every handle the
        // engine held was settled or dropped before the source was closed: take their news,
        // commit synchronously (on this thread), and leave the group.
        self.stash.clear();
        drop(settle_tx);
        while let Ok(s) = settle_rx.try_recv() {
            self.settle(s);
        }
        self.commit(CommitMode::Sync);
        // This consumer's partitions are no longer its backlog (another member's, or nobody's).
        let backlogs = &self.consumer.context().backlogs;
        for b in backlogs.all() {
            if self.topics.contains(b.source.as_str()) || self.membership.topics.contains(&b.source)
            {
                backlogs.remove(&b.source, b.partition);
            }
        }
        self.consumer.unsubscribe();
    }

    /// A consume error, at warn unless it repeats the last one within 30 s.
    fn report(&self, e: &KafkaError, last_error: &mut Option<(String, Instant)>) {
        let text = e.to_string();
        let repeat = last_error
            .as_ref()
            .is_some_and(|(t, at)| *t == text && at.elapsed() < Duration::from_secs(30));
        if repeat {
            return;
        }
        if matches!(
            e.rdkafka_error_code(),
            Some(RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic)
        ) {
            tracing::warn!(connector = %self.connector, error = %text, "the topic does not exist (yet); it is picked up once created");
        } else {
            tracing::warn!(connector = %self.connector, error = %text, "kafka consume error");
        }
        *last_error = Some((text, Instant::now()));
    }

    /// The record as an in-flight message, tracked.
    fn incoming(
        &self,
        m: &BorrowedMessage<'_>,
        partition: Partition,
        settle_tx: &mpsc::UnboundedSender<Settled>,
    ) -> (Partition, Incoming) {
        let headers: Vec<(&str, Option<&[u8]>)> = m
            .headers()
            .map(|h| h.iter().map(|h| (h.key, h.value)).collect())
            .unwrap_or_default();
        let record = Record {
            topic: m.topic(),
            partition: m.partition(),
            offset: m.offset(),
            key: m.key(),
            payload: m.payload(),
            headers,
            timestamp_ms: m.timestamp().to_millis(),
        };
        let (event, origin) = binding::decode(&self.connector, &record);
        let generation = match self.tracker.lock() {
            Ok(mut t) => t.track(&partition, m.offset()),
            Err(_) => 0,
        };
        let settled = Settled {
            partition: partition.clone(),
            generation,
            offset: m.offset(),
            outcome: Outcome::Released,
        };
        let settle_tx = settle_tx.clone();
        let ack = AckHandle::new(move |s| {
            let outcome = match s {
                Settlement::Delivered { .. } | Settlement::Failed { .. } => Outcome::Finished,
                Settlement::Retry { .. } => Outcome::Again,
                Settlement::Released => Outcome::Released,
            };
            let _ = settle_tx.send(Settled { outcome, ..settled });
        });
        let incoming = Incoming {
            event,
            origin,
            key: fnbroker_core::kit::ordering_key((m.topic(), m.partition())),
            redeliveries: 0,
            size: m.payload_len(),
            ack,
        };
        (partition, incoming)
    }

    /// Hands a record to the engine, or stashes it (behind what is stashed already).
    fn offer(&mut self, partition: Partition, incoming: Incoming) {
        if self.stash.is_empty() {
            match self.tx.try_send(incoming) {
                Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
                Err(mpsc::error::TrySendError::Full(incoming)) => {
                    self.stash.push_back((partition, incoming));
                }
            }
        } else {
            self.stash.push_back((partition, incoming));
        }
    }

    /// Hands stashed records out as the engine makes room, for up to `max`; resumes the
    /// partitions left with nothing stashed.
    fn wait_for_room(&mut self, max: Duration) {
        let deadline = Instant::now() + max;
        let tx = self.tx.clone();
        let runtime = tokio::runtime::Handle::current();
        while !self.stash.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            // Wait for room for a good part of the stash at once, not for one slot: woken for
            // each slot the engine frees, this thread would cost a futex wake and two context
            // switches per record (measured: the poll thread ran slower than the engine before this).
            let want = self.stash.len().min((tx.max_capacity() / 4).max(1));
            let permits = runtime.block_on(tokio::time::timeout(left, tx.reserve_many(want)));
            match permits {
                Err(_) => return,
                Ok(Err(_)) => {
                    // The engine is gone: what is stashed is released.
                    self.stash.clear();
                    return;
                }
                Ok(Ok(permits)) => {
                    for permit in permits {
                        let Some((partition, incoming)) = self.stash.pop_front() else {
                            break;
                        };
                        permit.send(incoming);
                        self.resume_if_unstashed(&partition);
                    }
                    // Whatever else fits now goes without another wait on the runtime.
                    while let Some((partition, incoming)) = self.stash.pop_front() {
                        match tx.try_send(incoming) {
                            Ok(()) => self.resume_if_unstashed(&partition),
                            Err(mpsc::error::TrySendError::Full(incoming)) => {
                                self.stash.push_front((partition, incoming));
                                break;
                            }
                            Err(mpsc::error::TrySendError::Closed(_)) => {
                                self.stash.clear();
                                return;
                            }
                        }
                    }
                }
            }
        }
    }

    /// Resumes `partition` once none of its records is stashed any more.
    fn resume_if_unstashed(&mut self, partition: &Partition) {
        if self.paused.contains(partition) && !self.stash.iter().any(|(p, _)| p == partition) {
            self.resume(partition);
        }
    }

    /// Pauses every partition with a record in the stash, so that polling brings no more.
    fn pause_stashed(&mut self) {
        let stashed: Vec<Partition> = self
            .stash
            .iter()
            .map(|(p, _)| p.clone())
            .filter(|p| !self.paused.contains(p))
            .collect();
        for partition in stashed {
            if self.paused.insert(partition.clone()) {
                let (topic, p) = &partition;
                if let Err(e) = self.consumer.pause(&one(topic, *p)) {
                    tracing::debug!(connector = %self.connector, %topic, partition = p, error = %e, "cannot pause");
                }
            }
        }
    }

    fn resume(&mut self, partition: &Partition) {
        if self.paused.remove(partition) {
            let (topic, p) = partition;
            if let Err(e) = self.consumer.resume(&one(topic, *p)) {
                tracing::debug!(connector = %self.connector, %topic, partition = p, error = %e, "cannot resume");
            }
            // Paused time is not a stall.
            self.last_seen.insert(partition.clone(), Instant::now());
        }
    }

    /// Drops what is stashed for partitions that were revoked: their new owner reads them.
    fn forget_revoked(&mut self) {
        let revoked = match self.consumer.context().revoked.lock() {
            Ok(mut r) if !r.is_empty() => std::mem::take(&mut *r),
            _ => return,
        };
        self.stash.retain(|(p, _)| !revoked.contains(p));
        for p in &revoked {
            self.paused.remove(p);
            self.last_seen.remove(p);
        }
    }

    fn settle(&mut self, s: Settled) {
        let rewind = s.outcome == Outcome::Again && !self.stop.is_cancelled();
        if let Ok(mut t) = self.tracker.lock() {
            if rewind {
                t.rewind(&s.partition, s.generation, s.offset);
            } else {
                t.settle(
                    &s.partition,
                    s.generation,
                    s.offset,
                    s.outcome == Outcome::Finished,
                );
            }
        }
        if rewind {
            // Handed back: read it (and what followed) again, so that it cannot hold the
            // partition's commits until a restart.
            let (topic, partition) = &s.partition;
            tracing::debug!(connector = %self.connector, %topic, partition, offset = s.offset, "rewinding to a record handed back");
            if let Err(e) =
                self.consumer
                    .seek(topic, *partition, Offset::Offset(s.offset), CALL_TIMEOUT)
            {
                tracing::warn!(connector = %self.connector, %topic, partition, error = %e, "cannot rewind; the record is redelivered after a restart");
            }
        }
    }

    fn commit(&self, mode: CommitMode) {
        let commits = match self.tracker.lock() {
            Ok(mut t) => t.take_commits(None),
            Err(_) => return,
        };
        let Some(tpl) = to_list(&commits) else {
            return;
        };
        match self.consumer.commit(&tpl, mode) {
            Ok(()) => {
                tracing::debug!(connector = %self.connector, partitions = commits.len(), "offsets committed");
            }
            Err(e) => {
                tracing::warn!(connector = %self.connector, error = %e, "offset commit failed; it is sent again with the next one");
                if let Ok(mut t) = self.tracker.lock() {
                    t.failed(&commits);
                }
            }
        }
    }

    /// While not ready (no assignment yet, or the brokers went away), asks the cluster for
    /// metadata: an answer means connected, whether or not the topics exist yet.
    fn probe_readiness(&self) {
        let context = self.consumer.context();
        if !context.ready.load(Ordering::Acquire)
            && self
                .consumer
                .fetch_metadata(None, Duration::from_secs(2))
                .is_ok()
        {
            context.up();
        }
    }

    /// Finds assigned, unpaused partitions with records beyond their position that delivered
    /// nothing for [`STALL_AFTER`], and seeks each to its position.
    fn check_stalls(&mut self) {
        let Ok(positions) = self.consumer.position() else {
            return;
        };
        for e in positions.elements() {
            let partition = intern(&mut self.topics, e.topic(), e.partition());
            if self.paused.contains(&partition) {
                continue;
            }
            let Offset::Offset(position) = e.offset() else {
                continue;
            };
            let seen = *self
                .last_seen
                .entry(partition.clone())
                .or_insert_with(Instant::now);
            if seen.elapsed() < STALL_AFTER {
                continue;
            }
            let Ok((_, high)) =
                self.consumer
                    .fetch_watermarks(e.topic(), e.partition(), CALL_TIMEOUT)
            else {
                continue;
            };
            if high <= position {
                // Caught up: quiet, not stalled.
                self.last_seen.insert(partition, Instant::now());
                continue;
            }
            let stalls = self
                .consumer
                .context()
                .stalls
                .fetch_add(1, Ordering::Relaxed)
                + 1;
            tracing::warn!(
                connector = %self.connector,
                topic = e.topic(),
                partition = e.partition(),
                position,
                high_watermark = high,
                idle = ?seen.elapsed(),
                stalls,
                "partition stalled: records are waiting but none arrived; seeking to its position"
            );
            if let Err(err) = self.consumer.seek(
                e.topic(),
                e.partition(),
                Offset::Offset(position),
                CALL_TIMEOUT,
            ) {
                tracing::warn!(connector = %self.connector, topic = e.topic(), partition = e.partition(), error = %err, "cannot seek the stalled partition");
            }
            self.last_seen.insert(partition, Instant::now());
        }
    }

    /// While this member holds no partition of its topics: reads each topic's records waiting
    /// after the group's committed offsets into the backlog (so `/readyz` and the stall gauge
    /// see them), and warns once when records waited and the group committed nothing for longer
    /// than the session timeout.
    fn check_starved(&mut self) {
        let holds = self.consumer.assignment().map_or(true, |a| a.count() > 0);
        if holds {
            if let Some(starved) = self.starved.take() {
                let backlogs = &self.consumer.context().backlogs;
                for topic in starved.progress.keys() {
                    backlogs.remove(topic, None);
                }
                if starved.warned {
                    tracing::info!(connector = %self.connector, group = %self.membership.group, "the member holds partitions again");
                }
            }
            return;
        }
        let now = Instant::now();
        let starved = self.starved.get_or_insert_with(|| Starved {
            progress: HashMap::new(),
            warned: false,
        });
        for topic in &self.membership.topics {
            let Some((waiting, taken)) = group_backlog(&self.consumer, topic) else {
                continue;
            };
            self.consumer.context().backlogs.update(
                topic,
                None,
                u64::try_from(waiting).unwrap_or(0),
                u64::try_from(taken).unwrap_or(0),
            );
            let since = match starved.progress.get(topic) {
                Some(&(before, since)) if before == taken && waiting > 0 => since,
                _ => now,
            };
            starved.progress.insert(topic.clone(), (taken, since));
            let idle = now.duration_since(since);
            if waiting > 0 && idle >= self.membership.session_timeout && !starved.warned {
                starved.warned = true;
                tracing::warn!(
                    connector = %self.connector,
                    group = %self.membership.group,
                    topic,
                    waiting,
                    idle = ?idle,
                    "this member of the group holds no partition of the topic while records wait and the group commits none: another member holds them without consuming (a member killed and restarted within the session timeout, a stopped process, or a broker that keeps a dead member's partitions); they wait until it leaves the group"
                );
            }
        }
    }
}

/// The records of `topic` waiting after the group's committed offsets (the low watermark where
/// none is committed), and the sum of those offsets (it grows as any member commits); `None`
/// when the cluster does not answer.
fn group_backlog(consumer: &BaseConsumer<Context>, topic: &str) -> Option<(i64, i64)> {
    let metadata = consumer.fetch_metadata(Some(topic), CALL_TIMEOUT).ok()?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return None;
    }
    let mut list = TopicPartitionList::new();
    for p in &partitions {
        list.add_partition(topic, *p);
    }
    let committed = consumer.committed_offsets(list, CALL_TIMEOUT).ok()?;
    let (mut waiting, mut taken) = (0, 0);
    for e in committed.elements() {
        let (low, high) = consumer
            .fetch_watermarks(topic, e.partition(), CALL_TIMEOUT)
            .ok()?;
        let from = match e.offset() {
            Offset::Offset(o) => o,
            _ => low,
        };
        waiting += (high - from).max(0);
        taken += from;
    }
    Some((waiting, taken))
}
