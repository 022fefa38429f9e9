//! The replication stream: the slot and the publication prepared, the changes streamed and
//! decoded into events, the position reported once their transactions were delivered, and the
//! stream opened again after a failure.

use crate::*;

/// Why the server was not ready to be read.
pub(crate) enum Prepare {
    /// The server answered: it cannot be read as configured.
    Refused(String),
    /// It could not be reached (or failed).
    Unreachable(String),
}

/// What the replication task needs.
pub(crate) struct Replication {
    pub(crate) connector: String,
    pub(crate) settings: PostgresSettings,
    pub(crate) target: Target,
    pub(crate) link: Arc<kit::Link>,
    pub(crate) up: Arc<std::sync::atomic::AtomicBool>,
    pub(crate) sql_tls: SqlTls,
}

impl Replication {
    /// A SQL session.
    pub(crate) async fn sql(&self) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        self.sql_tls.connect(&self.settings.url).await
    }

    /// Checks `wal_level` and the publication, and makes the slot when missing.
    pub(crate) async fn prepare(&self) -> Result<(), Prepare> {
        let unreachable = |e: tokio_postgres::Error| Prepare::Unreachable(with_causes(&e));
        let client = self.sql().await.map_err(unreachable)?;
        let level: String = client
            .query_one("SHOW wal_level", &[])
            .await
            .map_err(unreachable)?
            .get(0);
        if level != "logical" {
            return Err(Prepare::Refused(format!(
                "the server's wal_level is `{level}`; change data capture needs `wal_level = logical` (and a restart of PostgreSQL)"
            )));
        }
        let publication = &self.settings.publication;
        if client
            .query_opt(
                "SELECT 1 FROM pg_publication WHERE pubname = $1",
                &[publication],
            )
            .await
            .map_err(unreachable)?
            .is_none()
        {
            return Err(Prepare::Refused(format!(
                "the publication `{publication}` does not exist; create it: CREATE PUBLICATION {publication} FOR TABLE <tables> (or FOR ALL TABLES)"
            )));
        }
        let slot = &self.settings.slot;
        let exists = client
            .query_opt(
                "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
                &[slot],
            )
            .await
            .map_err(unreachable)?
            .is_some();
        if !exists {
            match client
                .execute(
                    "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
                    &[slot],
                )
                .await
            {
                Ok(_) => {
                    tracing::info!(connector = %self.connector, slot = %slot, "replication slot created");
                }
                // Made by another replica meanwhile.
                Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_OBJECT) => {}
                Err(e) => {
                    return Err(Prepare::Refused(format!(
                        "cannot create the replication slot `{slot}`: {e}"
                    )));
                }
            }
        }
        Ok(())
    }

    pub(crate) fn config(&self) -> ReplicationConfig {
        ReplicationConfig::new(
            self.target.host.clone(),
            self.target.user.clone(),
            self.target.password.clone(),
            self.target.database.clone(),
            self.settings.slot.clone(),
            self.settings.publication.as_str(),
        )
        .with_port(self.target.port)
        .with_tls(stream_tls(self.settings.tls.as_ref(), &self.target.host))
        .with_start_lsn(Lsn::ZERO)
        .with_status_interval(STATUS_INTERVAL)
        .with_buffer_size(1024)
    }

    /// Makes sure the slot's confirmed position is at least `lsn` once the stream is closed
    /// (the stream's last status may not have reached the server before it closed).
    pub(crate) async fn confirm(&self, lsn: Lsn) {
        if lsn == Lsn::ZERO {
            return;
        }
        let result = async {
            let client = self.sql().await?;
            // The server releases the slot shortly after the stream closed.
            for _ in 0..50 {
                let row = client
                    .query_opt(
                        "SELECT active, confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
                        &[&self.settings.slot],
                    )
                    .await?;
                let Some(row) = row else { return Ok(()) };
                let active: bool = row.get(0);
                let confirmed: Option<String> = row.get(1);
                if confirmed.as_deref().and_then(|c| c.parse::<Lsn>().ok()) >= Some(lsn) {
                    return Ok(());
                }
                if !active {
                    client
                        .execute(
                            "SELECT pg_replication_slot_advance($1, $2::text::pg_lsn)",
                            &[&self.settings.slot, &lsn.to_string()],
                        )
                        .await?;
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok::<(), tokio_postgres::Error>(())
        };
        if let Err(e) = result.await {
            tracing::warn!(connector = %self.connector, error = %e, "cannot confirm the last position; the last transactions may be delivered again");
        }
    }
}

/// An error with its causes ("error performing TLS handshake: invalid peer certificate: ...").
pub(crate) fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text = format!("{text}: {more}");
        }
        cause = c.source();
    }
    text
}

/// How a stream ended.
pub(crate) enum Ended {
    /// Stopping.
    Stop,
    /// An event was handed back: read again from the confirmed position after this delay.
    Replay(Duration),
}

/// Reads the slot until `stop`, reconnecting with backoff, standing by while another replica
/// reads it.
pub(crate) async fn replicate(
    replication: Arc<Replication>,
    mut subs: Vec<Sub>,
    finish: CancellationToken,
    stop: CancellationToken,
) {
    let tracker = Arc::new(Tracker::default());
    let mut backoff = kit::Backoff::reconnect();
    let mut standing_by = false;
    loop {
        if stop.is_cancelled() {
            break;
        }
        let ended = async {
            if let Err(Prepare::Refused(m) | Prepare::Unreachable(m)) = replication.prepare().await
            {
                return Err(m);
            }
            let mut client = ReplicationClient::connect(replication.config())
                .await
                .map_err(|e| e.to_string())?;
            let ended = stream(
                &replication,
                &mut client,
                &mut subs,
                &tracker,
                &finish,
                &stop,
            )
            .await;
            let last = tracker.flushed();
            client.update_applied_lsn(last);
            client.stop();
            let _ = client.shutdown().await;
            if tracker.moved() {
                replication.confirm(last).await;
            }
            ended
        }
        .await;
        match ended {
            Ok(Ended::Stop) => break,
            Ok(Ended::Replay(delay)) => {
                tracing::warn!(connector = %replication.connector, ?delay, "an event was handed back; reading the slot again from its confirmed position");
                if wait(&stop, &finish, &mut subs, delay).await {
                    break;
                }
            }
            Err(e) if e.contains("is active for PID") => {
                // Another replica reads the slot: stand by.
                replication
                    .up
                    .store(true, std::sync::atomic::Ordering::Release);
                if !standing_by {
                    tracing::info!(connector = %replication.connector, slot = %replication.settings.slot, "the slot is read by another replica; standing by");
                    standing_by = true;
                }
                if wait(&stop, &finish, &mut subs, STANDBY_RETRY).await {
                    break;
                }
            }
            Err(e) => {
                replication
                    .up
                    .store(false, std::sync::atomic::Ordering::Release);
                replication.link.failed(&e, "");
                if wait(&stop, &finish, &mut subs, backoff.next_delay()).await {
                    break;
                }
            }
        }
    }
}

/// Waits `delay` between sessions; true when `stop` fired first. Once the engine stops
/// (`finish`), the subscriptions end: nothing is being read.
pub(crate) async fn wait(
    stop: &CancellationToken,
    finish: &CancellationToken,
    subs: &mut Vec<Sub>,
    delay: Duration,
) -> bool {
    // Never ends by itself: it only drops the subscriptions once the engine stops.
    let ends = async {
        finish.cancelled().await;
        subs.clear();
        std::future::pending::<bool>().await
    };
    tokio::select! {
        stopped = kit::sleep_unless_stopped(stop, delay) => stopped,
        never = ends => never,
    }
}

/// PostgreSQL's epoch (2000-01-01) in Unix microseconds.
pub(crate) const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// The transaction being read: its commit position, commit time and the next position in it.
pub(crate) struct Open {
    pub(crate) txn: tracker::TxnId,
    pub(crate) commit_lsn: String,
    pub(crate) time: Option<DateTime<Utc>>,
    pub(crate) position: u32,
}

/// Hands out the changes of one replication session until `stop` or a hand-back.
pub(crate) async fn stream(
    replication: &Replication,
    client: &mut ReplicationClient,
    subs: &mut Vec<Sub>,
    tracker: &Arc<Tracker>,
    finish: &CancellationToken,
    stop: &CancellationToken,
) -> Result<Ended, String> {
    let mut decoder = pgoutput::Decoder::default();
    let mut flushed = tracker.watch();
    let mut open: Option<Open> = None;
    let mut started = false;
    tracker.restart();
    loop {
        // Once the engine stops, the transaction being read is finished and the subscriptions
        // end; then only the finished position moves, until `stop`.
        let finishing = finish.is_cancelled();
        if finishing && open.is_none() {
            subs.clear();
        }
        let reading = !subs.is_empty();
        let event = tokio::select! {
            biased;
            () = stop.cancelled() => return Ok(Ended::Stop),
            Ok(()) = flushed.changed() => {
                client.update_applied_lsn(*flushed.borrow_and_update());
                continue;
            }
            delay = tracker.handed_back(), if reading => return Ok(Ended::Replay(delay)),
            () = finish.cancelled(), if !finishing => continue,
            // Cancel safe: the client's events wait in its channel.
            event = client.recv(), if reading => event.map_err(|e| e.to_string())?,
        };
        if !started {
            started = true;
            replication
                .up
                .store(true, std::sync::atomic::Ordering::Release);
            replication.link.connected();
            tracing::info!(connector = %replication.connector, slot = %replication.settings.slot, publication = %replication.settings.publication, "reading the replication slot");
        }
        match event {
            None | Some(ReplicationEvent::StoppedAt { .. }) => return Ok(Ended::Stop),
            Some(ReplicationEvent::Begin {
                final_lsn,
                commit_time_micros,
                ..
            }) => {
                open = Some(Open {
                    txn: tracker.begin(),
                    commit_lsn: final_lsn.to_string(),
                    time: DateTime::from_timestamp_micros(commit_time_micros + PG_EPOCH_MICROS),
                    position: 0,
                });
            }
            Some(ReplicationEvent::Commit { end_lsn, .. }) => {
                if let Some(o) = open.take() {
                    tracker.commit(o.txn, end_lsn);
                }
            }
            Some(ReplicationEvent::KeepAlive { wal_end, .. }) => {
                if open.is_none() {
                    tracker.idle_at(wal_end);
                }
            }
            Some(ReplicationEvent::XLogData { data, .. }) => {
                let changes = decoder.decode(&data).map_err(|e| e.to_string())?;
                let Some(o) = open.as_mut() else { continue };
                for change in changes {
                    o.position += 1;
                    let qualified = format!("{}.{}", change.schema, change.table);
                    let takers = subs
                        .iter()
                        .filter(|s| table_matches(&s.filter, &qualified))
                        .count();
                    if takers == 0 {
                        continue;
                    }
                    // One event per change, cloned only for a second subscription taking it.
                    let key = kit::ordering_key(&qualified);
                    let mut event = Some(change_event(
                        &replication.connector,
                        &replication.settings.type_prefix,
                        change,
                        &o.commit_lsn,
                        o.position,
                        o.time,
                    ));
                    let matching = subs.iter().filter(|s| table_matches(&s.filter, &qualified));
                    for (i, sub) in matching.enumerate() {
                        let event = if i + 1 == takers {
                            event.take()
                        } else {
                            event.clone()
                        };
                        let Some(event) = event else { break };
                        let incoming = Incoming {
                            size: data.len(),
                            event,
                            origin: fnbroker_core::Origin::CloudEvent,
                            key,
                            redeliveries: 0,
                            ack: tracker.hold(o.txn),
                        };
                        tokio::select! {
                            () = stop.cancelled() => return Ok(Ended::Stop),
                            sent = sub.tx.send(incoming) => {
                                // A closed subscription releases the event: its transaction
                                // stays unfinished and is read again next time.
                                let _ = sent;
                            }
                        }
                    }
                }
            }
            Some(_) => {}
        }
    }
}
