//! The source: a group consumer's read loop (its own pending entries first, then new ones, then
//! the idle entries of consumers that are gone) and the retries it claims back when they fall due.

use crate::*;

/// One subscription's reader; closed, it no longer counts for readiness.
pub(crate) struct RedisSource {
    pub(crate) inner: ChannelSource,
    /// Its unit of the connector's subscriptions, for readiness: given back when the source
    /// goes, closed or dropped.
    pub(crate) subscribed: kit::Counted,
}

#[async_trait]
impl Source for RedisSource {
    async fn next(&mut self) -> Option<Incoming> {
        self.inner.next().await
    }

    fn stopping(&mut self) {
        self.inner.stopping();
    }

    // The group redelivers a retried entry once its delay is over (`XCLAIM`), counting it.
    fn capabilities(&self) -> fnbroker_core::SourceCapabilities {
        self.inner.capabilities()
    }

    async fn close(self: Box<Self>) {
        let Self { inner, subscribed } = *self;
        Box::new(inner).close().await;
        drop(subscribed);
    }
}

/// What a subscription reads: the stream, the group and this replica's consumer in it.
pub(crate) struct Spec {
    pub(crate) connector: String,
    pub(crate) client: redis::Client,
    pub(crate) stream: String,
    pub(crate) group: String,
    pub(crate) consumer: String,
    /// Create the group when missing, from there.
    pub(crate) create: Option<Start>,
    pub(crate) claim_after: Duration,
    pub(crate) link: Arc<kit::Link>,
}

/// Why a reading connection could not be opened.
pub(crate) enum Failure {
    /// The server answered: the group is not there (and is not to be made).
    Missing(String),
    /// The server could not be reached, or failed.
    Redis(RedisError),
}

impl From<RedisError> for Failure {
    fn from(e: RedisError) -> Self {
        Failure::Redis(e)
    }
}

impl Spec {
    /// A connection for the blocking reads, with the group there (made when `create` says so).
    pub(crate) async fn connect(&self) -> Result<MultiplexedConnection, Failure> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT + BLOCK));
        let mut conn = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        match self.create {
            Some(start) => {
                let from = if start == Start::Latest { "$" } else { "0" };
                let made: Result<Value, RedisError> = redis::cmd("XGROUP")
                    .arg("CREATE")
                    .arg(&self.stream)
                    .arg(&self.group)
                    .arg(from)
                    .arg("MKSTREAM")
                    .query_async(&mut conn)
                    .await;
                match made {
                    Ok(_) => {
                        tracing::info!(connector = %self.connector, stream = %self.stream, group = %self.group, "consumer group created");
                    }
                    Err(e) if e.code() == Some("BUSYGROUP") => {}
                    Err(e) => return Err(e.into()),
                }
            }
            None => {
                let groups: Result<Value, RedisError> = redis::cmd("XINFO")
                    .arg("GROUPS")
                    .arg(&self.stream)
                    .query_async(&mut conn)
                    .await;
                let known = match groups {
                    Ok(v) => reply::group_info(&v, &self.group).is_some(),
                    Err(e)
                        if e.kind()
                            == redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError) =>
                    {
                        false
                    }
                    Err(e) => return Err(e.into()),
                };
                if !known {
                    return Err(Failure::Missing(format!(
                        "the stream `{}` has no consumer group `{}`; create it (XGROUP CREATE {} {} 0 MKSTREAM) or set `create: true` on the trigger's `from`",
                        self.stream, self.group, self.stream, self.group
                    )));
                }
            }
        }
        Ok(conn)
    }

    pub(crate) fn read_group(&self, count: usize) -> redis::Cmd {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(&self.group)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(count);
        cmd
    }

    /// How many times the group delivered each of `entries` (to this consumer), by id.
    pub(crate) async fn delivery_counts(
        &self,
        conn: &mut MultiplexedConnection,
        entries: &[RawEntry],
    ) -> Result<Vec<u32>, RedisError> {
        // The entries come in the order they were asked for (a retried entry when its delay
        // is over), not by id: the range asked for spans the least and the greatest id.
        let by_id = |e: &&RawEntry| reply::stream_id(&e.id);
        let (Some(first), Some(last)) = (
            entries.iter().min_by_key(by_id),
            entries.iter().max_by_key(by_id),
        ) else {
            return Ok(Vec::new());
        };
        let pending: Value = redis::cmd("XPENDING")
            .arg(&self.stream)
            .arg(&self.group)
            .arg(&first.id)
            .arg(&last.id)
            .arg(entries.len() + MAX_BATCH)
            .arg(&self.consumer)
            .query_async(conn)
            .await?;
        let counts = reply::delivery_counts(&pending);
        Ok(entries
            .iter()
            .map(|e| counts.get(e.id.as_str()).copied().unwrap_or(1))
            .collect())
    }
}

/// Where a reader is in its stream.
pub(crate) enum Phase {
    /// Reading this consumer's own pending entries (held when it last stopped) after this id.
    Held(String),
    /// Reading new entries.
    New,
}

/// What one turn of the read loop got: entries, and whether the group delivered them before.
pub(crate) struct Batch {
    pub(crate) entries: Vec<RawEntry>,
    pub(crate) redelivered: bool,
}

/// The consume loop of one subscription: reads, claims and hands out entries until `stop`,
/// reconnecting with backoff; then sends every acknowledgement before it returns.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn consume(
    spec: Arc<Spec>,
    mut first: Option<MultiplexedConnection>,
    settler: RedisSettler,
    retries: mpsc::UnboundedReceiver<(String, Instant)>,
    (shared, backlogs): (Arc<Shared>, Arc<Backlogs>),
    reading: Arc<AtomicUsize>,
    tx: mpsc::Sender<Incoming>,
    stop: CancellationToken,
) {
    // Held entries have their idle time reset three times per `claim_after`, so that no other
    // consumer claims what this one still works on.
    let (acker, acks) = kit::Acker::with_lease(settler, spec.claim_after / 3);
    let taken = Arc::new(AtomicU64::new(0));
    let watching = stop.child_token();
    let watcher = {
        let (spec, taken, watching) = (Arc::clone(&spec), Arc::clone(&taken), watching.clone());
        let source = format!("{}/{}", spec.stream, spec.group);
        tokio::spawn(async move {
            backlogs
                .watch(&source, &watching, || async {
                    let mut conn = shared.get().await.ok()?;
                    let groups: Value = redis::cmd("XINFO")
                        .arg("GROUPS")
                        .arg(&spec.stream)
                        .query_async(&mut conn)
                        .await
                        .ok()?;
                    let waiting = reply::group_info(&groups, &spec.group)?.lag?;
                    Some((waiting, taken.load(Ordering::Relaxed)))
                })
                .await;
        })
    };
    let mut backoff = kit::Backoff::reconnect();
    // A restarted replica reads what it held first; after a reconnect in the same run, what it
    // holds is in flight here (and what it released is claimed after `claim_after`).
    let mut phase = Phase::Held("0".into());
    let mut retries = Retries {
        rx: retries,
        due: std::collections::BTreeSet::new(),
    };
    loop {
        let mut conn = match first.take() {
            Some(c) => c,
            None => match spec.connect().await {
                Ok(c) => c,
                Err(Failure::Missing(m)) => {
                    spec.link.failed(&m, "");
                    if kit::sleep_unless_stopped(&stop, backoff.next_delay()).await {
                        break;
                    }
                    continue;
                }
                Err(Failure::Redis(e)) => {
                    spec.link.failed(&e.to_string(), "");
                    if kit::sleep_unless_stopped(&stop, backoff.next_delay()).await {
                        break;
                    }
                    continue;
                }
            },
        };
        backoff.reset();
        spec.link.connected();
        let reader_up = kit::Counted::new(&reading);
        tracing::info!(connector = %spec.connector, stream = %spec.stream, group = %spec.group, consumer = %spec.consumer, "redis consumer started");
        let reader = Reader {
            spec: &spec,
            acker: &acker,
            taken: &taken,
            tx: &tx,
            stop: &stop,
        };
        let ended = reader.run(&mut conn, &mut phase, &mut retries).await;
        drop(reader_up);
        match ended {
            Ok(()) => break,
            Err(e) => {
                spec.link
                    .failed(&format!("reading `{}`: {e}", spec.stream), "");
                if kit::sleep_unless_stopped(&stop, backoff.next_delay()).await {
                    break;
                }
            }
        }
    }
    watching.cancel();
    let _ = watcher.await;
    // Stopping: every handle the engine held was settled or dropped; send those
    // acknowledgements before the connection may close.
    drop(acker);
    acks.finish().await;
}

/// Entries to deliver again, each once its retry delay is over.
pub(crate) struct Retries {
    pub(crate) rx: mpsc::UnboundedReceiver<(String, Instant)>,
    pub(crate) due: std::collections::BTreeSet<(Instant, String)>,
}

impl Retries {
    /// The ids due now, at most `n`, and when the next one falls due.
    pub(crate) fn take_due(&mut self, n: usize) -> (Vec<String>, Option<Instant>) {
        while let Ok((id, at)) = self.rx.try_recv() {
            self.due.insert((at, id));
        }
        let now = Instant::now();
        let mut ids = Vec::new();
        while ids.len() < n
            && let Some(first) = self.due.first()
            && first.0 <= now
        {
            if let Some((_, id)) = self.due.pop_first() {
                ids.push(id);
            }
        }
        (ids, self.due.first().map(|(at, _)| *at))
    }
}

/// What one subscription's read loop works with.
pub(crate) struct Reader<'a> {
    pub(crate) spec: &'a Spec,
    pub(crate) acker: &'a kit::Acker<String>,
    pub(crate) taken: &'a AtomicU64,
    pub(crate) tx: &'a mpsc::Sender<Incoming>,
    pub(crate) stop: &'a CancellationToken,
}

impl Reader<'_> {
    /// Reads until `stop` (`Ok`) or a failed command (`Err`: reconnect).
    pub(crate) async fn run(
        &self,
        conn: &mut MultiplexedConnection,
        phase: &mut Phase,
        retries: &mut Retries,
    ) -> Result<(), RedisError> {
        let Reader {
            spec,
            acker,
            taken,
            tx,
            stop,
        } = *self;
        let claim_every = (spec.claim_after / 2).max(Duration::from_millis(100));
        let mut claim_at = Instant::now();
        let mut claim_cursor = "0-0".to_string();
        let key = kit::ordering_key(&spec.stream);
        loop {
            // Room for at least one entry first: what is read is handed out at once.
            let room = tokio::select! {
                () = stop.cancelled() => return Ok(()),
                permit = tx.reserve() => match permit {
                    Ok(permit) => { drop(permit); tx.capacity().clamp(1, MAX_BATCH) }
                    Err(_) => return Ok(()),
                },
            };
            let (again, next_due) = retries.take_due(room);
            let batch = if !again.is_empty() {
                // Claimed again by this consumer: the group counts one more delivery.
                let mut cmd = redis::cmd("XCLAIM");
                cmd.arg(&spec.stream)
                    .arg(&spec.group)
                    .arg(&spec.consumer)
                    .arg(0);
                for id in &again {
                    cmd.arg(id);
                }
                Batch {
                    entries: reply::entries(&cmd.query_async(conn).await?),
                    redelivered: true,
                }
            } else if Instant::now() >= claim_at {
                let (next, entries) = claim(spec, conn, &claim_cursor, room).await?;
                if next == "0-0" {
                    claim_at = Instant::now() + claim_every;
                }
                claim_cursor = next;
                Batch {
                    entries,
                    redelivered: true,
                }
            } else {
                match phase {
                    Phase::Held(after) => {
                        let mut cmd = spec.read_group(room);
                        cmd.arg("STREAMS").arg(&spec.stream).arg(after.as_str());
                        let entries = reply::read_entries(&cmd.query_async(conn).await?);
                        match entries.last() {
                            Some(last) => *phase = Phase::Held(last.id.clone()),
                            None => *phase = Phase::New,
                        }
                        Batch {
                            entries,
                            redelivered: true,
                        }
                    }
                    Phase::New => {
                        let wake = next_due.map_or(claim_at, |due| due.min(claim_at));
                        let block = wake
                            .saturating_duration_since(Instant::now())
                            .clamp(Duration::from_millis(1), BLOCK);
                        let mut cmd = spec.read_group(room);
                        cmd.arg("BLOCK")
                            .arg(block.as_millis() as u64)
                            .arg("STREAMS")
                            .arg(&spec.stream)
                            .arg(">");
                        // A stop while blocked drops the read: what the server gave this consumer
                        // in the meantime stays pending for it, and is read first at its restart.
                        let value: Value = tokio::select! {
                            () = stop.cancelled() => return Ok(()),
                            v = cmd.query_async(conn) => v?,
                        };
                        Batch {
                            entries: reply::read_entries(&value),
                            redelivered: false,
                        }
                    }
                }
            };
            if batch.entries.is_empty() {
                continue;
            }
            let counts = if batch.redelivered {
                spec.delivery_counts(conn, &batch.entries).await?
            } else {
                Vec::new()
            };
            for (i, raw) in batch.entries.into_iter().enumerate() {
                let Some(fields) = &raw.fields else {
                    // Deleted (XDEL, trimmed) while pending: nothing to deliver.
                    let _: Value = redis::cmd("XACK")
                        .arg(&spec.stream)
                        .arg(&spec.group)
                        .arg(&raw.id)
                        .query_async(conn)
                        .await?;
                    continue;
                };
                let entry = binding::Entry::new(&spec.stream, &raw.id, fields);
                let (event, origin) = binding::decode(&spec.connector, &entry);
                let size = entry.size();
                taken.fetch_add(1, Ordering::Relaxed);
                let incoming = Incoming {
                    event,
                    origin,
                    key,
                    redeliveries: counts.get(i).map_or(0, |c| c.saturating_sub(1)),
                    size,
                    // The id moves into its handle: the entry is done with.
                    ack: acker.handle(raw.id),
                };
                if tx.send(incoming).await.is_err() {
                    return Ok(());
                }
            }
        }
    }
}

/// Claims entries idle for `claim_after` at any consumer of the group (`XAUTOCLAIM` from
/// `cursor`): the next cursor (`0-0` once round) and the entries.
pub(crate) async fn claim(
    spec: &Spec,
    conn: &mut MultiplexedConnection,
    cursor: &str,
    count: usize,
) -> Result<(String, Vec<RawEntry>), RedisError> {
    let value: Value = redis::cmd("XAUTOCLAIM")
        .arg(&spec.stream)
        .arg(&spec.group)
        .arg(&spec.consumer)
        .arg(spec.claim_after.as_millis() as u64)
        .arg(cursor)
        .arg("COUNT")
        .arg(count)
        .query_async(conn)
        .await?;
    let (next, entries) = reply::claimed(&value);
    if !entries.is_empty() {
        tracing::info!(connector = %spec.connector, stream = %spec.stream, group = %spec.group, entries = entries.len(), "claimed entries idle for claim_after at another consumer");
    }
    Ok((next, entries))
}
