//! `fnbroker`: an event-driven function broker.
//!
//! Connectors consume brokers and webhooks, every message becomes a CloudEvent 1.0, and triggers
//! route each event to a function, with retries, dead letters and replies. See the README for the
//! configuration and the delivery guarantees.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod admin;
mod connectors;
mod discovery;
mod engine;
mod explain;
mod metrics;
mod plan;
mod process;
mod recent;
mod redrive;
mod reload;
mod runtime;
mod systemd;
mod test_command;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use fnbroker_config as config;
use tokio_util::sync::CancellationToken;

/// The allocator of every build: mimalloc. musl's own costs a third of the throughput under
/// tokio's threads, and glibc's takes its arena locks when a buffer allocated on one worker is
/// freed on another (futex waits inside `malloc`/`free` in the profiles): against glibc's,
/// mimalloc took 0.79-0.92 of the CPU per event (README, Performance). Built without
/// transparent huge pages (`no_thp`): with them, on a kernel that has them `always` on, an idle
/// fnbroker's anonymous memory was 10 MiB instead of 2.5.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How long blocking tasks may still run once `run` returned, before the process exits anyway.
const RUNTIME_EXIT_GRACE: std::time::Duration = std::time::Duration::from_millis(500);

/// An event-driven function broker: Kafka, NATS, AMQP, MQTT and HTTP events, as CloudEvents, to
/// functions.
#[derive(Debug, Parser)]
#[command(name = "fnbroker", version, about)]
struct Cli {
    /// Log format: `human` (default) or `json` (one flat object per line). The level comes from
    /// RUST_LOG (default `info`).
    #[arg(long, value_enum, default_value_t = LogFormat::Human, global = true, env = "FNBROKER_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run until SIGINT or SIGTERM, then finish or hand back what is in flight. SIGHUP reloads
    /// the configuration.
    Run {
        /// The configuration file.
        #[arg(short, long, env = "FNBROKER_CONFIG")]
        config: PathBuf,
        /// Reload the configuration when its file changes (as SIGHUP does).
        #[arg(long, env = "FNBROKER_WATCH")]
        watch: bool,
    },
    /// Check a configuration: exit 0, or exit 2 with every error as FILE:LINE:COL: message.
    Validate {
        /// The configuration file.
        #[arg(short, long, env = "FNBROKER_CONFIG")]
        config: PathBuf,
    },
    /// Print the JSON Schema of the configuration.
    Schema,
    /// Publish one CloudEvent through a configured connector (to try triggers by hand).
    Send(Box<SendArgs>),
    /// Show what one message becomes, with no broker and no function: each attribute of its
    /// CloudEvent and where it came from, and each trigger's filter verdict with the part of the
    /// filter that decided.
    Explain(Box<ExplainArgs>),
    /// Move dead letters back to where they came from: each is read from `--from`, stripped of
    /// its `dlq*` attributes, republished to its trigger's source (or `--to`), and
    /// acknowledged only once the republish is confirmed. Prints what it moved.
    Redrive(Box<RedriveArgs>),
    /// Run the configuration's unit tests (YAML cases: a message, the event it becomes, the
    /// triggers that take it, what each function receives), with no broker and no function.
    /// Exit 1 when an expectation fails, with a diff.
    Test {
        /// The configuration file.
        #[arg(short, long, env = "FNBROKER_CONFIG")]
        config: PathBuf,
        /// Test files, or directories of `*.test.yaml` files. Default: `<config>.test.yaml`
        /// (or `<config>_test.yaml`) beside the configuration.
        tests: Vec<PathBuf>,
    },
}

#[derive(Debug, clap::Args)]
struct ExplainArgs {
    /// The configuration file.
    #[arg(short, long, env = "FNBROKER_CONFIG")]
    config: PathBuf,
    /// The connector the message arrives on.
    #[arg(long)]
    connector: String,
    /// The topic it arrives on (Kafka topic, NATS subject, MQTT topic, AMQP queue, HTTP path).
    #[arg(long)]
    topic: String,
    /// A header (Kafka, NATS, HTTP), header-table entry (AMQP) or user property (MQTT 5), as
    /// NAME=VALUE; repeat for more. `content-type` is the protocol's content type.
    #[arg(long = "header", value_name = "NAME=VALUE", value_parser = name_value)]
    headers: Vec<(String, String)>,
    /// The message key (Kafka).
    #[arg(long)]
    key: Option<String>,
    /// The data, as text.
    #[arg(long, conflicts_with = "data_file")]
    data: Option<String>,
    /// A file whose bytes are the data.
    #[arg(long)]
    data_file: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct RedriveArgs {
    /// The configuration file.
    #[arg(short, long, env = "FNBROKER_CONFIG")]
    config: PathBuf,
    /// Where the dead letters are, as CONNECTOR:TOPIC (an AMQP queue; a NATS subject a
    /// JetStream stream captures; an MQTT topic the redrive session subscribed to before).
    #[arg(long, value_name = "CONNECTOR:TOPIC")]
    from: redrive::Place,
    /// Where to send them all (default: each to the source of the trigger that dead-lettered
    /// it, its `dlqtrigger`).
    #[arg(long, value_name = "CONNECTOR:TOPIC")]
    to: Option<redrive::Place>,
    /// Only the dead letters that pass this CloudEvents SQL expression (the `dlq*` attributes
    /// can be read: `dlqtrigger = 'orders' AND dlqstatus = 503`).
    #[arg(long, value_name = "SQL")]
    filter: Option<String>,
    /// Move at most this many.
    #[arg(long)]
    limit: Option<usize>,
    /// Read and print what would be moved; move nothing, acknowledge nothing.
    #[arg(long)]
    dry_run: bool,
    /// Stop when no dead letter arrived for this long (the first may take three times as
    /// long: a Kafka group joining).
    #[arg(long, default_value = "5s", value_parser = duration)]
    wait: std::time::Duration,
}

/// A duration as the configuration writes it (`5s`, `250ms`).
fn duration(text: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("`{text}`: {e}"))
}

/// `NAME=VALUE`.
fn name_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_string(), value.to_string())),
        _ => Err(format!("`{text}` is not NAME=VALUE")),
    }
}

#[derive(Debug, clap::Args)]
struct SendArgs {
    /// The configuration file.
    #[arg(short, long, env = "FNBROKER_CONFIG")]
    config: PathBuf,
    /// The connector to publish through.
    #[arg(long)]
    connector: String,
    /// The topic (Kafka topic, NATS subject, MQTT topic, AMQP routing key).
    #[arg(long)]
    topic: String,
    /// AMQP: the exchange (default: the connector's).
    #[arg(long)]
    exchange: Option<String>,
    /// Publish the data as a device or a service would, with no CloudEvent attributes (only
    /// the content type, where the protocol carries one): what arrives is a plain message, which
    /// triggers normalize (their `event.type`, the topic as `subject`).
    #[arg(long, conflicts_with_all = ["ty", "source", "subject"])]
    plain: bool,
    /// The event's `type`.
    #[arg(long = "type", default_value = "com.example.test")]
    ty: String,
    /// The event's `source`.
    #[arg(long, default_value = "fnbroker://cli")]
    source: String,
    /// The event's `subject`.
    #[arg(long)]
    subject: Option<String>,
    /// The data, as text.
    #[arg(long, conflicts_with = "data_file")]
    data: Option<String>,
    /// A file whose bytes are the data.
    #[arg(long)]
    data_file: Option<PathBuf>,
    /// The data's content type (default: application/json when the data is JSON, else
    /// text/plain, or application/octet-stream for a file that is not UTF-8).
    #[arg(long)]
    content_type: Option<String>,
}

fn main() -> ExitCode {
    // One rustls crypto provider for every rustls user (async-nats is built with aws-lc-rs too,
    // ring is not linked); installed explicitly so that no client has to guess.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    // The help names the connector kinds this build has (each is a cargo feature) and the
    // function kinds.
    let function_kinds: Vec<&str> = connectors::REGISTRY.functions().map(|k| k.kind()).collect();
    let matches = Cli::command()
        .after_help(format!(
            "Connector kinds built in: {}. Function kinds: {}.",
            connectors::REGISTRY.names(),
            function_kinds.join(", ")
        ))
        .get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    init_logs(cli.log_format);
    match cli.command {
        Command::Schema => {
            let schema = config::json_schema(&connectors::REGISTRY);
            match serde_json::to_string_pretty(&schema) {
                Ok(text) => {
                    println!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("fnbroker: cannot print the schema: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Send(args) => {
            let cfg = match load(&args.config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let rt = match runtime() {
                Ok(rt) => rt,
                Err(code) => return code,
            };
            match rt.block_on(send(&cfg, *args)) {
                // A plain message has no id: nothing is printed for it.
                Ok(Some(id)) => {
                    println!("{id}");
                    ExitCode::SUCCESS
                }
                Ok(None) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("fnbroker: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Explain(args) => {
            let cfg = match load(&args.config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let data = match data_of(args.data.as_deref(), args.data_file.as_deref()) {
                Ok(data) => data,
                Err(e) => {
                    eprintln!("fnbroker: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let arrival = explain::Arrival {
                connector: &args.connector,
                sample: fnbroker_core::binding::Sample {
                    topic: &args.topic,
                    headers: &args.headers,
                    key: args.key.as_deref(),
                    data: &data,
                },
            };
            match explain::explain(&cfg, &arrival) {
                Ok(explained) => {
                    print!("{}", explain::render(&arrival, &explained));
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("fnbroker: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Redrive(args) => {
            let cfg = match load(&args.config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let rt = match runtime() {
                Ok(rt) => rt,
                Err(code) => return code,
            };
            let plan = redrive::Plan {
                from: args.from,
                to: args.to,
                filter: args.filter,
                limit: args.limit,
                dry_run: args.dry_run,
                wait: args.wait,
            };
            let stop = CancellationToken::new();
            let result = rt.block_on(async {
                let on_signal = stop.clone();
                tokio::spawn(async move {
                    wait_for_signal().await;
                    on_signal.cancel();
                });
                redrive::redrive(&cfg, &plan, &stop).await
            });
            rt.shutdown_timeout(RUNTIME_EXIT_GRACE);
            match result {
                Ok(outcome) => {
                    print!("{}", outcome.lines);
                    println!(
                        "{} {}, {} skipped{}",
                        if plan.dry_run { "would move" } else { "moved" },
                        outcome.moved,
                        outcome.skipped,
                        if plan.dry_run {
                            " (dry run: nothing moved)"
                        } else {
                            ""
                        }
                    );
                    match outcome.failed {
                        None => ExitCode::SUCCESS,
                        Some(why) => {
                            eprintln!(
                                "fnbroker: stopped: {why}; that dead letter stays where it was"
                            );
                            ExitCode::FAILURE
                        }
                    }
                }
                Err(e) => {
                    eprintln!("fnbroker: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Test { config, tests } => {
            let cfg = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let report = test_command::files(&config, &tests)
                .and_then(|files| test_command::run(&cfg, &files));
            match report {
                Ok(report) => {
                    print!("{}", report.text);
                    if report.failed == 0 && report.passed > 0 {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    }
                }
                Err(e) => {
                    eprintln!("fnbroker: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Validate { config } => match load(&config) {
            Ok(_) => {
                println!("{}: ok", config.display());
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Run { config, watch } => {
            let loaded = match reload::read(&config) {
                Ok(loaded) => loaded,
                Err(refused) => {
                    for e in &refused.errors {
                        eprintln!("{e}");
                    }
                    return ExitCode::from(2);
                }
            };
            // Listeners hold a descriptor per connection: use what the hard limit allows.
            if let Some(limit) = fnbroker_http::server::raise_fd_limit() {
                tracing::debug!(limit, "file descriptor limit");
            }
            // What an exec function leaves behind becomes ours to kill and reap, not init's.
            if !fnbroker_functions::become_subreaper() {
                tracing::debug!(
                    "cannot become the child subreaper of the exec functions' processes"
                );
            }
            let rt = match runtime() {
                Ok(rt) => rt,
                Err(code) => return code,
            };
            let reloader = reload::Reloader::new(config, loaded.revision);
            let result = rt.block_on(run(loaded.config, reloader, watch));
            // Blocking calls still running (a librdkafka metadata probe, a flush) must not hold
            // the exit: `run` already bounded the stop by `shutdown_timeout`.
            rt.shutdown_timeout(RUNTIME_EXIT_GRACE);
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = format!("{e:#}"), "fnbroker failed");
                    eprintln!("fnbroker: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Loads and validates the configuration; on errors prints each one and returns exit code 2.
/// The multi-threaded runtime of the commands that do IO; on failure, said and the exit code.
fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("fnbroker: cannot start the runtime: {e}");
            ExitCode::FAILURE
        })
}

/// The data of `--data` (text) or `--data-file` (bytes); none is empty data.
fn data_of(data: Option<&str>, file: Option<&Path>) -> Result<Vec<u8>, String> {
    match (data, file) {
        (Some(d), _) => Ok(d.as_bytes().to_vec()),
        (None, Some(f)) => {
            std::fs::read(f).map_err(|e| format!("cannot read {}: {e}", f.display()))
        }
        (None, None) => Ok(Vec::new()),
    }
}

fn load(path: &Path) -> Result<config::Config, ExitCode> {
    config::load(path, &connectors::REGISTRY).map_err(|errors| {
        for e in &errors.0 {
            eprintln!("{e}");
        }
        ExitCode::from(2)
    })
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let lines = tracing_subscriber::fmt::layer().with_writer(|| Redacting(std::io::stderr()));
    let registry = tracing_subscriber::registry()
        .with(filter)
        .with(recent::Recent);
    match format {
        // One flat object per line: the event's fields beside `timestamp`, `level` and
        // `message`, not nested under `fields`.
        LogFormat::Json => registry.with(lines.json().flatten_event(true)).init(),
        LogFormat::Human => registry
            .with(lines.with_ansi(std::io::stderr().is_terminal()))
            .init(),
    }
}

/// The log's writer: every line goes out with URL passwords, tokens and query values masked,
/// whichever crate wrote it (client libraries log their server addresses at debug, credentials
/// included), and with the control characters of its fields escaped (`\n`, `\r`, `\u{1b}`),
/// so text from outside (a function's stderr, a header, a broker's error) can neither forge a
/// line of the human format nor drive the terminal. The formatter writes an event at once, so
/// a line is never split between writes.
struct Redacting<W>(W);

impl<W: std::io::Write> std::io::Write for Redacting<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let (line, end) = match buf.strip_suffix(b"\n") {
            Some(line) => (line, &b"\n"[..]),
            None => (buf, &b""[..]),
        };
        let controls = has_foreign_controls(line);
        if controls || line.windows(3).any(|w| w == b"://") {
            let text = String::from_utf8_lossy(line);
            let text = if controls {
                std::borrow::Cow::Owned(escape_controls(&text))
            } else {
                text
            };
            self.0
                .write_all(fnbroker_core::redact::url(&text).as_bytes())?;
            self.0.write_all(end)?;
        } else {
            self.0.write_all(buf)?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// The length of a colour sequence the formatter writes itself (`ESC [ 1 ; 3 2 m`) at the start
/// of `bytes`, if one is there.
fn colour_sequence(bytes: &[u8]) -> Option<usize> {
    let rest = bytes.strip_prefix(b"\x1b[")?;
    let params = rest
        .iter()
        .take_while(|b| b.is_ascii_digit() || **b == b';')
        .count();
    (rest.get(params) == Some(&b'm')).then_some(params + 3)
}

/// Whether a formatted line holds a control character other than the formatter's colours: a
/// C0 control, DEL, or a C1 control (U+0080 to U+009F, `C2 80`..`C2 9F` in UTF-8).
fn has_foreign_controls(line: &[u8]) -> bool {
    let mut i = 0;
    while i < line.len() {
        match line[i] {
            0x1b => match colour_sequence(&line[i..]) {
                Some(n) => i += n,
                None => return true,
            },
            b if b < 0x20 || b == 0x7f => return true,
            0xc2 if line.get(i + 1).is_some_and(|b| (0x80..=0x9f).contains(b)) => return true,
            _ => i += 1,
        }
    }
    false
}

/// `line` with its control characters escaped, the formatter's colours kept.
fn escape_controls(line: &str) -> String {
    let mut out = String::with_capacity(line.len() + 16);
    let mut rest = line;
    while let Some(c) = rest.chars().next() {
        if let Some(n) = colour_sequence(rest.as_bytes()) {
            out.push_str(&rest[..n]);
            rest = &rest[n..];
            continue;
        }
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&c.escape_unicode().to_string()),
            c => out.push(c),
        }
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// Runs until SIGINT or SIGTERM, reloading the configuration on SIGHUP (and, with `watch`,
/// when its file changes). The signal is heard from the first moment: a connector that is still
/// connecting (a closed port, a TLS handshake that fails, a JetStream lookup that waits for a
/// server) does not hold the process, and the whole stop is bounded by `shutdown_timeout`.
async fn run(
    cfg: config::Config,
    mut reloader: reload::Reloader,
    watch: bool,
) -> anyhow::Result<()> {
    let signal = wait_for_signal();
    tokio::pin!(signal);
    // One poll registers the signal handlers, before anything can take time.
    if futures::poll!(&mut signal).is_ready() {
        return Ok(());
    }
    // Reload requests, coalesced: one waiting is enough.
    let (requests, mut reloads) = tokio::sync::mpsc::channel(1);
    reload::on_sighup(requests.clone())?;
    tracing::info!(
        connectors = cfg.connectors.len(),
        triggers = cfg.triggers.len(),
        "fnbroker starting"
    );
    let shutdown = CancellationToken::new();
    let started = tokio::select! {
        broker = runtime::Broker::start(&cfg, reloader.about(), &shutdown) => broker,
        () = &mut signal => {
            tracing::warn!("stopped while starting: some connectors had not connected yet");
            shutdown.cancel();
            return Ok(());
        }
    };
    let mut broker = started?;
    tracing::info!(
        triggers = cfg.triggers.len(),
        ready = broker.is_ready(),
        "fnbroker running"
    );
    let _watcher = if watch {
        Some(reload::watch(reloader.path(), requests.clone())?)
    } else {
        None
    };
    drop(requests);
    let notifier = systemd::Notifier::start(broker.readiness(), shutdown.clone());
    let mut budget = cfg.shutdown_timeout.get();
    loop {
        tokio::select! {
            () = &mut signal => break,
            Some(cause) = reloads.recv() => {
                if let Some(n) = &notifier {
                    n.reloading();
                }
                // A stop asked for during a reload is not held by it: what the reload started
                // is recorded as it starts, and the stop below drains it.
                let stopped = tokio::select! {
                    () = reloader.reload(&mut broker, cause) => false,
                    () = &mut signal => true,
                };
                if stopped {
                    break;
                }
                budget = reloader.shutdown_timeout().unwrap_or(budget);
                if let Some(n) = &notifier {
                    n.reloaded();
                }
            }
        }
    }
    if let Some(n) = &notifier {
        n.stopping();
    }
    tracing::info!(
        ?budget,
        "stopping: no new messages; finishing those in flight"
    );
    shutdown.cancel();
    if tokio::time::timeout(budget, broker.join()).await.is_err() {
        tracing::warn!(
            ?budget,
            "shutdown_timeout reached while closing connectors; exiting, the brokers redeliver what was not acknowledged"
        );
    }
    tracing::info!("stopped");
    Ok(())
}

/// Publishes one event built from the command line; returns its id (none for `--plain`).
async fn send(cfg: &config::Config, args: SendArgs) -> anyhow::Result<Option<String>> {
    use anyhow::Context;
    use fnbroker_core::event::{AttributesReader, AttributesWriter, Data, PlainMessage};
    if !connector_kind_can_publish(&args.connector, cfg) {
        anyhow::bail!(
            "connector `{}` cannot publish (an http ingress receives; send it a request instead)",
            args.connector
        );
    }
    let connector_cfg = cfg
        .connectors
        .get(&args.connector)
        .with_context(|| format!("no connector `{}` in the configuration", args.connector))?;
    let data =
        data_of(args.data.as_deref(), args.data_file.as_deref()).map_err(anyhow::Error::msg)?;
    let content_type = args.content_type.clone().or_else(|| {
        if data.is_empty() {
            None
        } else if serde_json::from_slice::<serde_json::Value>(&data).is_ok() {
            Some("application/json".to_string())
        } else if std::str::from_utf8(&data).is_ok() {
            Some("text/plain; charset=utf-8".to_string())
        } else {
            Some("application/octet-stream".to_string())
        }
    });
    let mut event = fnbroker_core::event::normalize(
        PlainMessage {
            kind: "cli",
            connector: &args.connector,
            topic: &args.topic,
            time: Some(chrono::Utc::now()),
            ..Default::default()
        },
        Vec::new(),
    );
    event.set_type(args.ty.as_str());
    event.set_source(args.source.as_str());
    event.set_subject(args.subject.as_deref());
    event.set_datacontenttype(content_type.as_deref());
    if !data.is_empty() {
        event.set_data_unchecked(Data::Binary(data));
    }
    let connector = runtime::build_connector(&args.connector, connector_cfg)?;
    let mut keys = std::collections::BTreeMap::new();
    if let Some(exchange) = &args.exchange {
        if connector_cfg.kind() != "amqp" {
            anyhow::bail!("`--exchange` is for amqp connectors only");
        }
        keys.insert("exchange".to_string(), exchange.as_str().into());
    }
    let destination = config::Destination {
        connector: None,
        topic: Some(args.topic.clone()),
        function: None,
        keys: config::ConnectorKeys::new(keys),
    };
    let sink = connector.sink(&destination).await?;
    if args.plain {
        let data = fnbroker_core::event::data_bytes(&event);
        let published = sink
            .publish_plain(&args.topic, &data, event.datacontenttype())
            .await;
        connector.stop().await;
        published.map_err(|e| match e {
            fnbroker_core::ConnectorError::Unsupported { what, .. } => {
                anyhow::anyhow!("connector `{}` cannot {what}", args.connector)
            }
            e => e.into(),
        })?;
        return Ok(None);
    }
    sink.publish(&args.topic, &event).await?;
    connector.stop().await;
    Ok(Some(event.id().to_string()))
}

fn connector_kind_can_publish(name: &str, cfg: &config::Config) -> bool {
    cfg.connectors.get(name).is_none_or(|c| {
        connectors::REGISTRY
            .get(c.kind())
            .is_some_and(|k| k.capabilities().publishes)
    })
}

async fn wait_for_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::Redacting;

    fn written(line: &str) -> String {
        let mut out = Redacting(Vec::new());
        out.write_all(line.as_bytes()).expect("write");
        String::from_utf8(out.0).expect("utf-8")
    }

    #[test]
    fn control_characters_are_escaped_and_colours_kept() {
        assert_eq!(
            written("WARN failed error=oops\n2026-12-07T00:00:00Z ERROR forged\n"),
            "WARN failed error=oops\\n2026-12-07T00:00:00Z ERROR forged\n"
        );
        assert_eq!(
            written("\u{1b}[1m\u{1b}[33mWARN\u{1b}[0m a\rb \u{1b}[2J c\u{85}\n"),
            "\u{1b}[1m\u{1b}[33mWARN\u{1b}[0m a\\rb \\u{1b}[2J c\\u{85}\n"
        );
        assert_eq!(written("plain line\n"), "plain line\n");
        assert_eq!(
            written("x url=amqp://u:p@h\tq\n"),
            "x url=amqp://u:***@h\\tq\n"
        );
    }
}
