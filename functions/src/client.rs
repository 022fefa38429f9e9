//! The HTTP/1.1 client of the HTTP kinds: hyper's pooled client, used directly.
//!
//! One [`Endpoint`] per function: its URI parsed once, keep-alive connections pooled (up to the
//! function's concurrency idle), `TCP_NODELAY`, TLS through rustls when the URL is `https`.
//! A request is the endpoint's URI, a header map and a body; the answer is read whole. No
//! redirects are followed (a function that answers 3xx fails the attempt with that status), no
//! proxy is used, nothing is added to the headers but `Host` and `Content-Length`.
//!
//! reqwest, which the platforms with protocols of their own (OpenWhisk, Lambda) still use, does
//! the same over the same hyper client, with a URL parse, a redirect policy, a decompression
//! check and a boxed future of its own per request: measured, that was a tenth of fnbroker's
//! CPU per event.

use fnbroker_core::function::BuildError;
use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, HOST, HeaderMap, HeaderValue};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::InvokeError;
use crate::http_fn::error_chain;

/// How long an idle pooled connection is kept.
const IDLE: Duration = Duration::from_secs(90);

/// The connector of an endpoint: plain TCP, or TLS over it.
#[derive(Debug, Clone)]
enum Pool {
    Plain(Client<HttpConnector, Full<Bytes>>),
    Tls(Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>),
}

/// What both client stacks (hyper's pool of [`Endpoint`], and reqwest for the platforms with
/// protocols of their own) set up the same way for one endpoint: the URL, parsed once and
/// `http` or `https`; for `https`, fnbroker's TLS configuration (the system's roots without a
/// `tls` block); and a `server_name` that stands for the URL's IP address: verified, sent as
/// SNI and as `Host`.
pub(crate) struct Setup {
    /// The URL as given.
    pub(crate) url: url::Url,
    /// The TLS configuration of an `https` URL (`None` for `http`).
    pub(crate) tls: Option<rustls::ClientConfig>,
    /// The name the server at the URL's address is verified as, when `tls.server_name` says.
    pub(crate) named: Option<Named>,
    /// The most idle keep-alive connections kept.
    pub(crate) concurrency: usize,
}

/// A server reached by address and verified by name.
pub(crate) struct Named {
    /// The name as configured.
    pub(crate) name: String,
    /// The URL's address and port.
    pub(crate) address: std::net::SocketAddr,
    /// The name as TLS sends and verifies it.
    pub(crate) sni: rustls::pki_types::ServerName<'static>,
}

impl Setup {
    /// The setup of `url` keeping up to `concurrency` idle connections, with `tls`.
    pub(crate) fn new(
        url: &str,
        concurrency: usize,
        tls: Option<&fnbroker_core::tls::Tls>,
    ) -> Result<Self, BuildError> {
        let redacted = || fnbroker_core::redact::url(url);
        let parsed =
            url::Url::parse(url).map_err(|e| format!("invalid URL `{}`: {e}", redacted()))?;
        match parsed.scheme() {
            "https" => {}
            "http" => {
                return Ok(Self {
                    url: parsed,
                    tls: None,
                    named: None,
                    concurrency,
                });
            }
            other => {
                return Err(format!(
                    "invalid URL `{}`: the scheme must be http or https, not `{other}`",
                    redacted()
                )
                .into());
            }
        }
        let default = fnbroker_core::tls::Tls::default();
        let tls = tls.unwrap_or(&default);
        let config = tls.client_config().map_err(|e| format!("tls: {e}"))?;
        let named = match (&tls.server_name, tls.server_name()) {
            (Some(name), Some(sni)) => {
                let ip = match parsed.host() {
                    Some(url::Host::Ipv4(ip)) => std::net::IpAddr::V4(ip),
                    Some(url::Host::Ipv6(ip)) => std::net::IpAddr::V6(ip),
                    _ => {
                        return Err(
                            "tls: `server_name` needs a URL with an IP address (with a host name, that name is verified)"
                                .into(),
                        );
                    }
                };
                let port = parsed.port_or_known_default().unwrap_or(443);
                Some(Named {
                    name: name.clone(),
                    address: std::net::SocketAddr::new(ip, port),
                    sni,
                })
            }
            _ => None,
        };
        Ok(Self {
            url: parsed,
            tls: Some(config),
            named,
            concurrency,
        })
    }

    /// A reqwest client of this setup (no proxy, `TCP_NODELAY`), and the URL to request with
    /// it: with `server_name`, the name in place of the address, resolved to it.
    pub(crate) fn reqwest(self) -> Result<(reqwest::Client, reqwest::Url), BuildError> {
        let mut url = self.url;
        let mut builder = reqwest::Client::builder()
            .pool_max_idle_per_host(self.concurrency)
            .tcp_nodelay(true)
            .no_proxy();
        if let Some(mut config) = self.tls {
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            builder = builder.tls_backend_preconfigured(config);
        }
        if let Some(named) = &self.named {
            builder = builder.resolve(&named.name, named.address);
            url.set_host(Some(&named.name))
                .map_err(|e| format!("tls: `server_name` `{}`: {e}", named.name))?;
        }
        let client = builder
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok((client, url))
    }
}

/// One function's URL and its pool of keep-alive connections.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    pool: Pool,
    uri: http::Uri,
    /// `Host` when `server_name` names the server the URL gives by address.
    host: Option<HeaderValue>,
    /// `Authorization: Basic` from the URL's user and password (`http://user:pass@host/`),
    /// sent unless a request has an `Authorization` of its own.
    authorization: Option<HeaderValue>,
    /// The largest reply read: a 2xx answer with a longer body fails the attempt, the body of
    /// another answer is cut there.
    max_reply: usize,
}

impl Endpoint {
    /// An endpoint for `url` keeping up to `concurrency` idle connections, with fnbroker's TLS
    /// configuration when there is a `tls` block (the system's roots for an `https` URL
    /// without one). A `server_name` other than the URL's host (which must then be an IP
    /// address) is verified, sent as SNI and as `Host`.
    pub(crate) fn new(
        url: &str,
        concurrency: usize,
        tls: Option<&fnbroker_core::tls::Tls>,
    ) -> Result<Self, BuildError> {
        let redacted = || fnbroker_core::redact::url(url);
        let Setup {
            url: mut parsed,
            tls,
            named,
            concurrency,
        } = Setup::new(url, concurrency, tls)?;
        let authorization = userinfo(&mut parsed)
            .map(|(user, password)| {
                let mut value = HeaderValue::try_from(crate::platforms::basic(&user, &password))
                    .map_err(|_| format!("invalid URL `{}`: the user or password", redacted()))?;
                value.set_sensitive(true);
                Ok::<_, String>(value)
            })
            .transpose()?;
        let uri: http::Uri = parsed
            .as_str()
            .parse()
            .map_err(|e| format!("invalid URL `{}`: {e}", redacted()))?;
        let mut tcp = HttpConnector::new();
        tcp.set_nodelay(true);
        tcp.enforce_http(tls.is_none());
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_max_idle_per_host(concurrency)
            .pool_idle_timeout(IDLE)
            .pool_timer(TokioTimer::new());
        let mut host = None;
        let pool = match tls {
            Some(mut config) => {
                // hyper-rustls offers ALPN `http/1.1` itself (`enable_http1`) and refuses a
                // configuration that names protocols already.
                config.alpn_protocols.clear();
                let connector = hyper_rustls::HttpsConnectorBuilder::new()
                    .with_tls_config(config)
                    .https_only();
                let connector = match named {
                    Some(named) => {
                        let value = match parsed.port() {
                            Some(port) => format!("{}:{port}", named.name),
                            None => named.name.clone(),
                        };
                        host =
                            Some(HeaderValue::try_from(value).map_err(|e| {
                                format!("tls: `server_name` `{}`: {e}", named.name)
                            })?);
                        connector.with_server_name_resolver(
                            hyper_rustls::FixedServerNameResolver::new(named.sni),
                        )
                    }
                    None => connector,
                };
                Pool::Tls(builder.build(connector.enable_http1().wrap_connector(tcp)))
            }
            // A `tls` block is for `https` URLs; over `http` there is nothing to apply it to.
            None => Pool::Plain(builder.build(tcp)),
        };
        Ok(Self {
            pool,
            uri,
            host,
            authorization,
            max_reply: crate::MAX_REPLY,
        })
    }

    /// Reads replies of at most `bytes`.
    pub(crate) fn with_max_reply(mut self, bytes: usize) -> Self {
        self.max_reply = bytes;
        self
    }

    /// POSTs `body` with `headers` and reads the whole answer, whatever its status.
    pub(crate) async fn post(
        &self,
        mut headers: HeaderMap,
        body: Bytes,
    ) -> Result<(u16, HeaderMap, Bytes), InvokeError> {
        if let Some(host) = &self.host {
            headers.insert(HOST, host.clone());
        }
        if let Some(authorization) = &self.authorization {
            headers
                .entry(AUTHORIZATION)
                .or_insert_with(|| authorization.clone());
        }
        let mut request = http::Request::new(Full::new(body));
        *request.method_mut() = http::Method::POST;
        *request.uri_mut() = self.uri.clone();
        *request.headers_mut() = headers;
        let response = match &self.pool {
            Pool::Plain(client) => client.request(request).await,
            Pool::Tls(client) => client.request(request).await,
        }
        .map_err(|e| InvokeError::Connect(error_chain(&e)))?;
        let (parts, mut body) = response.into_parts();
        let mut reply = Reply::new(parts.status.as_u16(), &parts.headers, self.max_reply)?;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| InvokeError::Connect(error_chain(&e)))?;
            if let Ok(data) = frame.into_data()
                && !reply.push(&data)?
            {
                break;
            }
        }
        Ok((parts.status.as_u16(), parts.headers, reply.into_bytes()))
    }
}

/// A reply read as a stream, within `max_reply`: a 2xx answer that is longer fails the attempt
/// (before its body is read when `Content-Length` says so); the body of another answer, read
/// only for the start of the dead letter's reason, is cut there.
pub(crate) struct Reply {
    success: bool,
    max: usize,
    body: bytes::BytesMut,
}

impl Reply {
    /// A reply with `status` and `headers` to be read within `max` bytes.
    pub(crate) fn new(status: u16, headers: &HeaderMap, max: usize) -> Result<Self, InvokeError> {
        let success = (200..300).contains(&status);
        let declared = headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if success && declared.is_some_and(|len| len > max) {
            return Err(too_large(max));
        }
        Ok(Self {
            success,
            max,
            body: bytes::BytesMut::with_capacity(declared.unwrap_or(0).min(max)),
        })
    }

    /// Adds a chunk; false once the rest is not worth reading (an error's body past `max`).
    pub(crate) fn push(&mut self, data: &[u8]) -> Result<bool, InvokeError> {
        let room = self.max.saturating_sub(self.body.len());
        if data.len() > room {
            if self.success {
                return Err(too_large(self.max));
            }
            self.body.extend_from_slice(&data[..room]);
            return Ok(false);
        }
        self.body.extend_from_slice(data);
        Ok(true)
    }

    /// The body read.
    pub(crate) fn into_bytes(self) -> Bytes {
        self.body.freeze()
    }
}

fn too_large(max: usize) -> InvokeError {
    const MIB: usize = 1024 * 1024;
    let max = if max.is_multiple_of(MIB) {
        format!("{} MiB", max / MIB)
    } else {
        format!("{max} bytes")
    };
    InvokeError::Output(format!("the reply is larger than max_reply ({max})"))
}

/// Takes the user and password out of `url` (percent-decoded), if it has them.
fn userinfo(url: &mut url::Url) -> Option<(String, String)> {
    if url.username().is_empty() && url.password().is_none() {
        return None;
    }
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    };
    let user = decode(url.username());
    let password = decode(url.password().unwrap_or(""));
    // Cannot fail for an http(s) URL, which has a host.
    let _ = url.set_username("");
    let _ = url.set_password(None);
    Some((user, password))
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
    use tokio::net::TcpListener;

    use super::*;

    /// Reads one HTTP/1.1 request: its head (lower-cased) and body.
    async fn read_request(
        reader: &mut BufReader<tokio::net::TcpStream>,
    ) -> Option<(String, Vec<u8>)> {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).await.ok()? == 0 {
                return None;
            }
            if line == "\r\n" {
                break;
            }
            head.push_str(&line.to_ascii_lowercase());
        }
        let length = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; length];
        reader.read_exact(&mut body).await.ok()?;
        Some((head, body))
    }

    #[tokio::test]
    async fn posts_over_one_kept_alive_connection_and_follows_no_redirect() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let server = tokio::spawn(async move {
            // One connection only: the second request must come over the first's.
            let (stream, _) = listener.accept().await.expect("accept");
            let mut reader = BufReader::new(stream);
            let mut seen = Vec::new();
            let answers = [
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok",
                "HTTP/1.1 307 Temporary Redirect\r\nlocation: /elsewhere\r\ncontent-length: 0\r\n\r\n",
            ];
            for answer in answers {
                let request = read_request(&mut reader).await.expect("a request");
                seen.push(request);
                reader
                    .get_mut()
                    .write_all(answer.as_bytes())
                    .await
                    .expect("answer");
            }
            seen
        });
        let endpoint = Endpoint::new(
            &format!("http://fn%40b:p%3Ass@127.0.0.1:{port}/f?x=1"),
            4,
            None,
        )
        .expect("endpoint");
        let mut headers = HeaderMap::new();
        headers.insert("ce-id", HeaderValue::from_static("1"));
        let (status, answer, body) = endpoint
            .post(headers.clone(), Bytes::from_static(b"hello"))
            .await
            .expect("first");
        assert_eq!((status, &body[..]), (200, &b"ok"[..]));
        assert_eq!(answer["content-type"], "text/plain");
        let (status, answer, _) = endpoint
            .post(headers, Bytes::from_static(b"again"))
            .await
            .expect("second");
        assert_eq!(status, 307, "the redirect is the answer, not followed");
        assert_eq!(answer["location"], "/elsewhere");
        let seen = server.await.expect("server");
        let (head, body) = &seen[0];
        assert!(head.starts_with("post /f?x=1 http/1.1\r\n"), "{head}");
        assert!(
            head.contains(&format!("host: 127.0.0.1:{port}\r\n")),
            "{head}"
        );
        assert!(head.contains("ce-id: 1\r\n"), "{head}");
        // The URL's user and password as Basic authentication (`fn@b:p:ss`), not in the URI.
        assert!(
            head.contains("authorization: basic zm5ayjpwonnz\r\n"),
            "{head}"
        );
        assert_eq!(body, b"hello");
        assert_eq!(seen[1].1, b"again");
    }

    #[tokio::test]
    async fn an_unreachable_function_is_a_connect_error() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        };
        let endpoint =
            Endpoint::new(&format!("http://127.0.0.1:{port}/"), 1, None).expect("endpoint");
        match endpoint.post(HeaderMap::new(), Bytes::new()).await {
            Err(InvokeError::Connect(e)) => assert!(e.contains("refused"), "{e}"),
            other => panic!("expected a connect error, got {other:?}"),
        }
    }

    #[test]
    fn urls_are_checked_when_built() {
        let err = Endpoint::new("ftp://host/f", 1, None).expect_err("ftp");
        assert!(err.to_string().contains("http or https"), "{err}");
        let tls = fnbroker_core::tls::Tls {
            server_name: Some("fn.internal".into()),
            ..Default::default()
        };
        let err = Endpoint::new("https://fn.example/f", 1, Some(&tls)).expect_err("named host");
        assert!(
            err.to_string().contains("needs a URL with an IP address"),
            "{err}"
        );
    }

    #[test]
    fn both_stacks_set_an_endpoint_up_alike() {
        let tls = fnbroker_core::tls::Tls {
            server_name: Some("fn.internal".into()),
            ..Default::default()
        };
        // The same refusals whichever stack asks.
        for url in ["ftp://host/f", "https://fn.example/f"] {
            let pool = Endpoint::new(url, 1, Some(&tls)).expect_err(url);
            let reqwest = crate::http_fn::client_for(url, 1, Some(&tls)).expect_err(url);
            assert_eq!(pool.to_string(), reqwest.to_string());
        }
        // A name for an address: verified as the name, connected to the address.
        let setup = Setup::new("https://10.1.2.3:8443/f", 4, Some(&tls)).expect("setup");
        assert!(setup.tls.is_some());
        let named = setup.named.as_ref().expect("server_name");
        assert_eq!(named.address.to_string(), "10.1.2.3:8443");
        let (_, url) = setup.reqwest().expect("client");
        assert_eq!(url.as_str(), "https://fn.internal:8443/f");
        let pool = Endpoint::new("https://10.1.2.3:8443/f", 4, Some(&tls)).expect("endpoint");
        assert_eq!(
            pool.host.as_ref().and_then(|h| h.to_str().ok()),
            Some("fn.internal:8443")
        );
        // Plain HTTP has no TLS to set up.
        let plain = Setup::new("http://127.0.0.1:8080/f", 1, Some(&tls)).expect("setup");
        assert!(plain.tls.is_none() && plain.named.is_none());
    }
}
