//! Pull requests of a JetStream consumer, with the count of what the server still owes kept
//! right.
//!
//! async-nats 0.51's pull `Stream` counts a request's messages as owed only once its background
//! task reports the request sent; a local server can answer before that, and the messages that
//! arrive first are subtracted from a count already at zero (`saturating_sub`). The stream then
//! believes a whole batch is still owed, sends no further request, and stalls until the request
//! expires: measured here (nats-server 2.9.10) as 5 s stalls, several per 100,000 messages, with
//! the server showing no waiting request and 20,000 messages pending. [`Demand`] counts a
//! request before it is published, so no answer can overtake it.

use std::pin::Pin;
use std::time::Duration;

use async_nats::jetstream;
use async_nats::{StatusCode, Subscriber};
use bytes::Bytes;
use futures::StreamExt;
use tokio::time::{Instant, Sleep};

/// How many messages the requests sent and not finished may still bring.
#[derive(Debug)]
pub(crate) struct Demand {
    batch: usize,
    owed: usize,
}

impl Demand {
    pub(crate) fn new(batch: usize) -> Self {
        Self {
            batch: batch.max(1),
            owed: 0,
        }
    }

    /// Whether to send a request now (when at most half a batch is owed): it is counted at
    /// once, before it is sent.
    pub(crate) fn want(&mut self) -> bool {
        if self.owed <= self.batch / 2 {
            self.owed += self.batch;
            true
        } else {
            false
        }
    }

    /// A message arrived.
    pub(crate) fn delivered(&mut self) {
        self.owed = self.owed.saturating_sub(1);
    }

    /// A request ended (expired, or terminated) with `left` of its messages undelivered; when
    /// the server does not say, a whole batch. Counting too little here only sends a request
    /// early, which the server queues; counting too much would stall.
    pub(crate) fn ended(&mut self, left: Option<usize>) {
        self.owed = self.owed.saturating_sub(left.unwrap_or(self.batch));
    }

    /// Every request sent has expired: nothing is owed.
    pub(crate) fn expired(&mut self) {
        self.owed = 0;
    }
}

/// The messages of one consumer, pulled on an inbox of its own.
pub(crate) struct Puller {
    context: jetstream::Context,
    /// `$JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>` (the connector's contexts use the
    /// default API prefix; async-nats does not expose the context's).
    subject: String,
    inbox: String,
    subscriber: Subscriber,
    request: Bytes,
    demand: Demand,
    expires: Duration,
    /// When the last request sent has expired at the server (plus a margin): past it, nothing
    /// is owed any more, whatever the count says.
    deadline: Pin<Box<Sleep>>,
}

/// What ends a pull: the consumer went away or the server refuses the requests.
#[derive(Debug)]
pub(crate) struct PullError(pub(crate) String);

impl Puller {
    /// Subscribes to a new inbox for `consumer` of `stream`; requests `batch` messages at a
    /// time, each request waiting at most `expires` at the server.
    pub(crate) async fn open(
        context: &jetstream::Context,
        stream: &str,
        consumer: &str,
        batch: usize,
        expires: Duration,
    ) -> Result<Self, PullError> {
        let client = context.client();
        let inbox = client.new_inbox();
        let subscriber = client
            .subscribe(inbox.clone())
            .await
            .map_err(|e| PullError(format!("cannot subscribe to the pull inbox: {e}")))?;
        let request = serde_json::to_vec(&serde_json::json!({
            "batch": batch,
            "expires": u64::try_from(expires.as_nanos()).unwrap_or(u64::MAX),
        }))
        .map_err(|e| PullError(e.to_string()))?;
        Ok(Self {
            context: context.clone(),
            subject: format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"),
            inbox,
            subscriber,
            request: Bytes::from(request),
            demand: Demand::new(batch),
            expires,
            deadline: Box::pin(tokio::time::sleep(Duration::ZERO)),
        })
    }

    /// The next message; `None` once the connection is gone for good.
    pub(crate) async fn next(&mut self) -> Option<Result<jetstream::Message, PullError>> {
        loop {
            if self.demand.want() {
                let sent = self
                    .context
                    .client()
                    .publish_with_reply(
                        self.subject.clone(),
                        self.inbox.clone(),
                        self.request.clone(),
                    )
                    .await;
                if let Err(e) = sent {
                    self.demand.expired();
                    return Some(Err(PullError(format!("cannot send a pull request: {e}"))));
                }
                let margin = Duration::from_secs(1);
                self.deadline
                    .as_mut()
                    .reset(Instant::now() + self.expires + margin);
            }
            let message = tokio::select! {
                m = self.subscriber.next() => m?,
                () = self.deadline.as_mut() => {
                    self.demand.expired();
                    continue;
                }
            };
            if let Some(outcome) = self.read(message) {
                return Some(outcome);
            }
        }
    }

    /// A message already received and not read yet, if any (without waiting).
    pub(crate) fn buffered(&mut self) -> Option<jetstream::Message> {
        use futures::FutureExt as _;
        while let Some(Some(message)) = self.subscriber.next().now_or_never() {
            if let Some(Ok(m)) = self.read(message) {
                return Some(m);
            }
        }
        None
    }

    /// A message from the stream, the end of a request (counted, nothing to return), or an
    /// error that ends the pull.
    fn read(
        &mut self,
        message: async_nats::Message,
    ) -> Option<Result<jetstream::Message, PullError>> {
        match message.status {
            None | Some(StatusCode::OK) => {
                self.demand.delivered();
                Some(Ok(jetstream::Message {
                    message,
                    context: self.context.clone(),
                }))
            }
            Some(StatusCode::IDLE_HEARTBEAT) => None,
            Some(StatusCode::TIMEOUT | StatusCode::REQUEST_TERMINATED) => {
                let description = message.description.as_deref().unwrap_or_default();
                // The request itself is wrong, or the consumer is gone: asking again cannot help.
                let fatal = [
                    "Consumer Deleted",
                    "Consumer is push based",
                    "Exceeded MaxRequest",
                ];
                if fatal.iter().any(|f| description.starts_with(f)) {
                    return Some(Err(PullError(format!(
                        "the server ended the pull: {description}"
                    ))));
                }
                let left = message
                    .headers
                    .as_ref()
                    .and_then(|h| h.get("Nats-Pending-Messages"))
                    .and_then(|v| v.as_str().parse().ok());
                self.demand.ended(left);
                None
            }
            Some(status) => Some(Err(PullError(format!(
                "the server answered the pull with {status}{}",
                message
                    .description
                    .map(|d| format!(" ({d})"))
                    .unwrap_or_default()
            )))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_that_overtakes_its_request_is_still_counted() {
        // What stalled async-nats' stream: half a batch owed, a new request goes out, and the
        // server's answer (the rest of the old request and all of the new one) is read before
        // anything else happens.
        let mut d = Demand::new(64);
        assert!(d.want());
        for _ in 0..32 {
            d.delivered();
        }
        assert!(d.want(), "half a batch owed: ask for more");
        for _ in 0..(32 + 64) {
            d.delivered();
        }
        assert!(d.want(), "everything asked for arrived: ask again");
    }

    #[test]
    fn one_request_at_a_time_while_more_than_half_a_batch_is_owed() {
        let mut d = Demand::new(64);
        assert!(d.want());
        assert!(!d.want());
        for _ in 0..31 {
            d.delivered();
        }
        assert!(!d.want(), "33 still owed");
        d.delivered();
        assert!(d.want());
    }

    #[test]
    fn an_ended_request_gives_back_what_it_did_not_bring() {
        let mut d = Demand::new(64);
        assert!(d.want());
        d.delivered();
        assert!(!d.want());
        d.ended(Some(63));
        assert!(d.want());
        // Without the header, a whole batch: never more than is owed.
        d.ended(None);
        d.ended(None);
        assert!(d.want());
    }

    #[test]
    fn expiry_forgets_what_was_owed() {
        let mut d = Demand::new(64);
        assert!(d.want());
        d.expired();
        assert!(d.want());
    }
}
