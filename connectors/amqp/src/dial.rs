//! Opening a connection: plain (`amqp://`), or TLS (`amqps://`, or any URL with a `tls` block)
//! with the rustls configuration of the connector's `tls` block (CA, client certificate, server
//! name). With a client certificate and no user in the URL, the connection authenticates with
//! SASL EXTERNAL (RabbitMQ's `rabbitmq_auth_mechanism_ssl`: the certificate is the identity).

use std::sync::Arc;

use lapin::tcp::{AMQPUriTcpExt, RustlsConnector, TLSConfig};
use lapin::uri::{AMQPScheme, AMQPUri, SASLMechanism};
use lapin::{Channel, Connection, ConnectionProperties};

/// How long closing a channel or a connection may take before it is given up (the socket then
/// goes with the connection's last handle).
pub(crate) const CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Closes `channel` unless it is closed already, bounded; see [`close`].
pub(crate) async fn close_channel(channel: &Channel, reason: &str) {
    if channel.status().connected() {
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, channel.close(200, reason.into())).await;
    }
}

/// Closes `channels`, each awaited, then `conn`. The order is the point: a channel whose last
/// handle drops is closed by lapin's internal task a moment later, and if the connection's close
/// starts in between, that channel close fails and lapin (4.12) turns the failure into an error
/// of the whole connection, after which `Connection::close` may never return (measured: 6 in
/// 1,000 drop-then-close rounds, one of them waiting forever; closed explicitly first, 0). Every
/// step is bounded besides, so a stop never waits on the server.
pub(crate) async fn close(conn: Connection, channels: &[&Channel], reason: &str) {
    for channel in channels {
        close_channel(channel, reason).await;
    }
    if conn.status().connected() {
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, conn.close(200, reason.into())).await;
    }
}

/// How to open a connection of the connector; cheap to clone.
#[derive(Clone)]
pub(crate) struct Dial {
    uri: AMQPUri,
    connection_name: String,
    tls: Option<Arc<rustls::ClientConfig>>,
}

/// The largest AMQP frame fnbroker proposes, unless the URL sets `frame_max`. lapin keeps a
/// receive and a send buffer of 32 frames each per connection: at RabbitMQ's default of 128 KiB
/// that was 8 MiB of a connector's 9.8 MiB idle heap (heaptrack). A message larger than a frame
/// is sent in several; the 4 KiB and 256 B messages of the benchmark fit in one.
pub(crate) const FRAME_MAX: u32 = 32 * 1024;

impl Dial {
    /// Parses `url` and builds the TLS configuration (`tls`, or the system's roots for an
    /// `amqps://` URL without one).
    pub(crate) fn new(
        url: &str,
        connection_name: String,
        tls: Option<&fnbroker_core::tls::Tls>,
    ) -> Result<Self, String> {
        let mut uri: AMQPUri = url
            .parse()
            .map_err(|e| format!("invalid URL {}: {e}", fnbroker_core::redact::url(url)))?;
        let tls = match (tls, &uri.scheme) {
            (Some(tls), _) => Some(tls.clone()),
            (None, AMQPScheme::AMQPS) => Some(fnbroker_core::tls::Tls::default()),
            (None, AMQPScheme::AMQP) => None,
        };
        let config = match &tls {
            Some(t) => Some(Arc::new(
                t.client_config().map_err(|e| format!("tls: {e}"))?,
            )),
            None => None,
        };
        if uri.query.frame_max.is_none() {
            uri.query.frame_max = Some(FRAME_MAX);
        }
        if let Some(t) = &tls {
            let no_user = url::Url::parse(url).is_ok_and(|u| u.username().is_empty());
            if t.cert.is_some() && no_user && uri.query.auth_mechanism.is_none() {
                uri.query.auth_mechanism = Some(SASLMechanism::External);
            }
        }
        Ok(Self {
            uri,
            connection_name,
            tls: config,
        })
    }

    /// The same server under another connection name.
    pub(crate) fn named(&self, connection_name: String) -> Self {
        Self {
            connection_name,
            ..self.clone()
        }
    }

    /// The connection name shown by the broker.
    pub(crate) fn connection_name(&self) -> &str {
        &self.connection_name
    }

    /// Whether the connection uses TLS.
    pub(crate) fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Opens a connection (and, with TLS, completes the handshake).
    pub(crate) async fn connect(&self) -> Result<Connection, lapin::Error> {
        let props = ConnectionProperties::default()
            .with_connection_name(self.connection_name.clone().into());
        let Some(config) = &self.tls else {
            return Connection::connect_uri(self.uri.clone(), props).await;
        };
        let connector = RustlsConnector::from(Arc::clone(config));
        let runtime = lapin::runtime::default_runtime()?;
        Connection::connector(
            self.uri.clone(),
            runtime,
            async move |uri: AMQPUri, runtime| {
                let mut plain = uri.clone();
                plain.scheme = AMQPScheme::AMQP;
                let stream = plain
                    .connect_with_config_async(TLSConfig::default(), &runtime)
                    .await?;
                Ok(stream.into_rustls(&connector, &uri.authority.host).await?)
            },
            props,
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_small_unless_the_url_says_otherwise() {
        let dial =
            Dial::new("amqp://guest:guest@127.0.0.1:5672/%2f", "t".into(), None).expect("dial");
        assert_eq!(dial.uri.query.frame_max, Some(FRAME_MAX));
        let dial = Dial::new(
            "amqp://guest:guest@127.0.0.1:5672/%2f?frame_max=131072",
            "t".into(),
            None,
        )
        .expect("dial");
        assert_eq!(dial.uri.query.frame_max, Some(131_072));
    }
}
