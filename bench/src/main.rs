//! fnbroker's end-to-end benchmark. For each connector it measures, in one run on one machine:
//! the raw consume rate of the broker alone, the direct path (the same client library consuming
//! and POSTing to the same function server at the same concurrency, with none of fnbroker's
//! work), and fnbroker itself started as a separate process; then reports fnbroker / direct as
//! ratios, with latency at a fixed rate, CPU per event, memory at full speed and behind a
//! backlog, and start-up time.
//!
//! ```sh
//! cargo run --release -p bench -- --connector all
//! cargo run --release -p bench -- --connector nats --events 200000 --size 256,4096
//! cargo run -p bench -- --quick --connector http     # smoke: every event arrives
//! cargo run --release -p bench -- --warm              # warm functions (see `warm`)
//! ```

mod buses;
mod chart;
mod process;
mod report;
mod sink;
mod warm;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use tokio_util::sync::CancellationToken;

use buses::{Bus, Forward, Publish};
use report::{Latency, Row};
use sink::{Sink, Tally, now_ns, payload};

/// fnbroker end to end against the direct path, per connector.
#[derive(Debug, Parser)]
#[command(name = "bench", version)]
struct Args {
    /// Connectors to measure: http, kafka, nats, jetstream, amqp, mqtt, redis, postgres (comma-separated), or all.
    #[arg(long, default_value = "all")]
    connector: String,
    /// Events per throughput measurement.
    #[arg(long, default_value_t = 100_000)]
    events: u64,
    /// Payload sizes in bytes (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "256")]
    size: Vec<usize>,
    /// Deliveries in flight, for fnbroker (`max_in_flight`, function `concurrency`) and the
    /// direct path alike.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Events waiting behind a slow function for the backlog measurement (brokers that hold a
    /// backlog: Kafka, JetStream, AMQP); 0 skips it. Measured for the first size only.
    #[arg(long, default_value_t = 1_000_000)]
    backlog: u64,
    /// Rate of the latency measurement, events per second.
    #[arg(long, default_value_t = 1_000)]
    rate: u64,
    /// Length of the latency measurement, in seconds.
    #[arg(long, default_value_t = 5)]
    latency_secs: u64,
    /// Unconfirmed events the publisher may be ahead of the function in the throughput runs,
    /// instead of each broker's own window (Mosquitto 1,000, core NATS 2,000, HTTP 5,000, the
    /// others 20,000).
    #[arg(long)]
    window: Option<u64>,
    /// Alternated throughput runs per row (direct, fnbroker, direct, fnbroker...): the report
    /// gives medians and ranges. Quick runs make one.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// A short run (5,000 events, 1 s of latency, a 20,000-event backlog): a smoke test that
    /// every event arrives, not a measurement.
    #[arg(long)]
    quick: bool,
    /// Also run fnbroker with traces on (every event sampled, exported by OTLP/HTTP to the
    /// bench's own server, which drops them) and report what tracing costs, as ratios.
    #[arg(long)]
    traced: bool,
    /// The fnbroker binary; by default it is built with cargo in this bench's profile.
    #[arg(long)]
    fnbroker: Option<PathBuf>,
    /// A second fnbroker binary (another build: the static musl release against the glibc
    /// one), measured at full throughput right after the first on the same connector and
    /// payload, and reported as ratios against it.
    #[arg(long)]
    against: Option<PathBuf>,
    /// Also run fnbroker with `delivery.batch` at these batch sizes (`max_events`, 5 ms
    /// `max_wait`), each at full throughput on a lane of its own, and report throughput and CPU
    /// per event as ratios against the first size given (`--batch 1,10,100`).
    #[arg(long, value_delimiter = ',')]
    batch: Vec<usize>,
    /// Measure warm functions instead of the connectors: a Python handler per event (`exec`)
    /// against the same handler kept warm (`process`, Lambda Runtime API), an HTTP server run
    /// by hand against the same server under `process`, and one instance's cold start.
    #[arg(long)]
    warm: bool,
    /// The Python with `awslambdaric` for `--warm` (default: the one `scripts/deps.sh` installs).
    #[arg(long)]
    python: Option<PathBuf>,
    /// Where to write the report; by default `bench/results/` for full runs, nowhere for quick
    /// ones.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Phases tag every payload, so late events of one measurement never count for another.
static PHASE: AtomicU32 = AtomicU32::new(1);

fn next_phase() -> u32 {
    PHASE.fetch_add(1, Ordering::Relaxed)
}

/// Progress must not stall for longer than this, or the events are counted as lost.
const STALL: Duration = Duration::from_secs(30);

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    match run(Args::parse()).await {
        Ok(true) => {}
        Ok(false) => {
            eprintln!("bench: some events were lost (see the report)");
            std::process::exit(1);
        }
        Err(e) => {
            eprintln!("bench: {e:#}");
            std::process::exit(2);
        }
    }
}

async fn run(mut args: Args) -> anyhow::Result<bool> {
    if args.quick {
        args.events = args.events.min(5_000);
        args.latency_secs = 1;
        args.backlog = args.backlog.min(20_000);
        args.runs = 1;
    }
    if args.events == 0
        || args.runs == 0
        || args.size.is_empty()
        || args.concurrency == 0
        || args.rate == 0
    {
        bail!("--events, --size, --concurrency and --rate and --runs must be positive");
    }
    if args.warm {
        let binary = process::binary(args.fnbroker.clone())?;
        let python = warm::python(args.python.clone())?;
        let events = if args.quick {
            200
        } else {
            args.events.min(20_000)
        };
        let samples = if args.quick { 1 } else { args.runs };
        let text = warm::run(&binary, &python, events, samples).await?;
        println!("{text}");
        if let Some(dir) = out_dir(&args) {
            std::fs::create_dir_all(&dir)?;
            let file = dir.join(report::file_name("warm"));
            std::fs::write(&file, &text)?;
            eprintln!("bench: report written to {}", file.display());
        }
        return Ok(true);
    }
    let names: Vec<String> = if args.connector == "all" {
        buses::ALL.iter().map(ToString::to_string).collect()
    } else {
        args.connector
            .split(',')
            .map(|s| s.trim().to_string())
            .collect()
    };
    let buses = names
        .iter()
        .map(|n| buses::bus(n))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let binary = process::binary(args.fnbroker.clone())?;
    let sink = Sink::start().await?;
    now_ns();

    let http_raw = raw_http(&sink, &args).await?;
    eprintln!("bench: raw HTTP to the function server: {http_raw:.0} events/s");
    let mut rows = Vec::new();
    let mut complete = true;
    for bus in &buses {
        for (i, &size) in args.size.iter().enumerate() {
            eprintln!("bench: {} with {size}-byte payloads", bus.name());
            let backlog = if i == 0 && bus.holds_backlog() {
                args.backlog
            } else {
                0
            };
            let row = measure(bus.as_ref(), &sink, &binary, &args, size, backlog)
                .await
                .with_context(|| format!("{} ({size} bytes)", bus.name()))?;
            complete &= row.lost_total() == 0;
            eprintln!("{}", report::row_line(&row));
            rows.push(row);
        }
    }
    let text = report::render(&rows, http_raw, &args_summary(&args, &binary));
    println!("{text}");
    if let Some(dir) = out_dir(&args) {
        std::fs::create_dir_all(&dir)?;
        let file = dir.join(report::file_name(&args.connector));
        std::fs::write(&file, &text)?;
        eprintln!("bench: report written to {}", file.display());
        // The charts next to it: `<report>.svg` (ratios) and `<report>.latency.svg`.
        let ratios = file.with_extension("svg");
        let latency = file.with_extension("").with_extension("latency.svg");
        chart::ratios(&rows, &ratios)?;
        chart::latencies(&rows, &latency)?;
        eprintln!(
            "bench: charts written to {} and {}",
            ratios.display(),
            latency.display()
        );
    }
    Ok(complete)
}

/// Where the report goes: `--out`, else `bench/results/` for full runs and nowhere for quick
/// ones.
fn out_dir(args: &Args) -> Option<PathBuf> {
    match (&args.out, args.quick) {
        (Some(p), _) => Some(p.clone()),
        (None, false) => Some(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("results")),
        (None, true) => None,
    }
}

fn args_summary(args: &Args, binary: &std::path::Path) -> String {
    format!(
        "events {} per throughput run, {} alternated runs per path, in flight {}, latency at {}/s for {} s, backlog {}, fnbroker `{}`{}",
        args.events,
        args.runs,
        args.concurrency,
        args.rate,
        args.latency_secs,
        args.backlog,
        binary.display(),
        args.against
            .as_ref()
            .map(|a| format!(", against `{}`", a.display()))
            .unwrap_or_default()
    ) + &args
        .window
        .map(|w| format!(", window {w} for every broker"))
        .unwrap_or_default()
}

/// One connector at one payload size: raw consume, the direct path, then fnbroker.
async fn measure(
    bus: &dyn Bus,
    sink: &Arc<Sink>,
    binary: &std::path::Path,
    args: &Args,
    size: usize,
    backlog: u64,
) -> anyhow::Result<Row> {
    let mut row = Row::new(bus.name(), size);

    let started = Instant::now();
    let step = |what: &str| {
        eprintln!(
            "bench:   {} {size} B: {what} (at {:.1} s)",
            bus.name(),
            started.elapsed().as_secs_f64()
        );
    };
    // The broker alone: consume and count.
    step("raw consume");
    let raw = in_process(bus, sink, Forward::Count(sink.clone()), args, size, false).await?;
    row.raw_eps = raw.throughput.eps;
    row.lost += raw.throughput.lost;

    // The direct path: consume and POST, same client, same function server, same concurrency.
    // Its first run also measures latency; it alternates with fnbroker's runs.
    let post = || Forward::Post {
        client: reqwest::Client::new(),
        url: sink.url().into(),
    };
    step("direct path");
    let direct = in_process(bus, sink, post(), args, size, true).await?;
    row.lost += direct.throughput.lost;
    row.direct_latency = direct.latency.unwrap_or_default();

    // fnbroker: the first run also measures idle RSS, ready time, latency and the backlog.
    step("fnbroker");
    let lane = bus.create(&lane_id()).await?;
    let config = bus.config(&lane, &sink.url(), args.concurrency);
    let fb = process::Fnbroker::start(binary, &config).await?;
    row.ready_ms = fb.ready.as_secs_f64() * 1e3;
    row.idle_rss = fb.rss().ok();
    row.idle_anon = fb.anon().ok();
    let mut publisher = bus.publisher(&lane).await?;
    let (fnb, cpu, peak_anon) = full_speed(&fb, publisher.as_mut(), bus, sink, args, size).await?;
    row.lost += fnb.lost;
    row.duplicates += fnb.duplicates;
    row.add_run(report::Pair {
        direct_eps: direct.throughput.eps,
        fnbroker_eps: fnb.eps,
        cpu,
        peak_rss: fb.peak_rss().ok(),
        peak_anon,
    });
    step(&format!(
        "run 1: direct {:.0}/s, fnbroker {:.0}/s",
        direct.throughput.eps, fnb.eps
    ));
    step("fnbroker latency");
    row.latency = latency(publisher.as_mut(), sink, args, size).await?;
    if backlog > 0 {
        step("fnbroker backlog");
        row.backlog_rss = Some(backlog_rss(publisher.as_mut(), sink, &fb, backlog, size).await?);
    }
    if row.lost_total() > 0 {
        eprintln!("bench: fnbroker's log:\n{}", fb.log());
    }
    step("stopping");
    fb.stop(Duration::from_secs(2)).await;
    sink.set_slow(false);
    drop(publisher);
    bus.remove(&lane).await;
    for run in 2..=args.runs {
        step(&format!("direct path, run {run}"));
        let direct = in_process(bus, sink, post(), args, size, false).await?;
        row.lost += direct.throughput.lost;
        step(&format!("fnbroker, run {run}"));
        let other = second_run(bus, sink, binary, args, size, "", None).await?;
        row.lost += other.lost;
        row.duplicates += other.duplicates;
        step(&format!(
            "run {run}: direct {:.0}/s, fnbroker {:.0}/s",
            direct.throughput.eps, other.eps
        ));
        row.add_run(report::Pair {
            direct_eps: direct.throughput.eps,
            fnbroker_eps: other.eps,
            cpu: other.cpu,
            peak_rss: other.peak_rss,
            peak_anon: other.peak_anon,
        });
    }
    if args.traced {
        step("fnbroker traced");
        let telemetry = format!(
            "telemetry:\n  otlp: {{ endpoint: \"{}\", protocol: http/protobuf }}\n  sample_ratio: 1.0\n",
            sink.base_url()
        );
        let other = second_run(bus, sink, binary, args, size, &telemetry, None).await?;
        row.traced = Some((other.eps, other.cpu));
        row.lost += other.lost;
    }
    if let Some(against) = &args.against {
        step("the other build");
        let other = second_run(bus, sink, against, args, size, "", None).await?;
        row.against = Some(other.clone());
        row.lost += other.lost;
    }
    for &batch in &args.batch {
        step(&format!("fnbroker, batches of {batch}"));
        let other = second_run(bus, sink, binary, args, size, "", Some(batch)).await?;
        row.lost += other.lost;
        row.batches.push((batch, other));
    }
    Ok(row)
}

/// A second fnbroker run at full throughput on a lane of its own: `binary` with `extra` added
/// to the configuration (traces on), or another build of fnbroker; with `batch`, its trigger
/// batches that many events.
async fn second_run(
    bus: &dyn Bus,
    sink: &Arc<Sink>,
    binary: &std::path::Path,
    args: &Args,
    size: usize,
    extra: &str,
    batch: Option<usize>,
) -> anyhow::Result<report::Other> {
    let lane = bus.create(&lane_id()).await?;
    let mut config = bus.config(&lane, &sink.url(), args.concurrency);
    if let Some(n) = batch {
        let with = config.replace(
            "delivery: { max_in_flight:",
            &format!("delivery: {{ batch: {{ max_events: {n}, max_wait: 5ms }}, max_in_flight:"),
        );
        anyhow::ensure!(
            with != config,
            "the bench's trigger has no `delivery` to batch"
        );
        config = with;
    }
    if !config.ends_with('\n') {
        config.push('\n');
    }
    config.push_str(extra);
    let fb = process::Fnbroker::start(binary, &config).await?;
    let idle_rss = fb.rss().ok();
    let mut publisher = bus.publisher(&lane).await?;
    let (t, cpu, peak_anon) = full_speed(&fb, publisher.as_mut(), bus, sink, args, size).await?;
    let peak_rss = fb.peak_rss().ok();
    fb.stop(Duration::from_secs(2)).await;
    drop(publisher);
    bus.remove(&lane).await;
    Ok(report::Other {
        eps: t.eps,
        cpu,
        lost: t.lost,
        duplicates: t.duplicates,
        idle_rss,
        peak_rss,
        peak_anon,
    })
}

/// A running fnbroker at full throughput, after a warm-up: what arrived, its CPU seconds per
/// 100,000 events, and its highest anonymous RSS.
async fn full_speed(
    fb: &process::Fnbroker,
    publisher: &mut dyn Publish,
    bus: &dyn Bus,
    sink: &Sink,
    args: &Args,
    size: usize,
) -> anyhow::Result<(Throughput, f64, Option<u64>)> {
    let anon = fb.watch_anon();
    warm_up(publisher, sink).await?;
    let cpu_before = fb.cpu()?;
    let t = throughput(
        publisher,
        sink,
        args.window.unwrap_or(bus.window()),
        args.events,
        size,
    )
    .await?;
    let cpu = fb.cpu()?.saturating_sub(cpu_before);
    Ok((
        t,
        cpu.as_secs_f64() * 100_000.0 / args.events as f64,
        anon.end(),
    ))
}

/// What a path run inside the bench measured.
struct InProcess {
    throughput: Throughput,
    latency: Option<Latency>,
}

/// A path inside the bench process on a lane of its own: the bus's consumer handing each
/// payload to `forward`; throughput, then latency at the fixed rate if `with_latency`.
async fn in_process(
    bus: &dyn Bus,
    sink: &Sink,
    forward: Forward,
    args: &Args,
    size: usize,
    with_latency: bool,
) -> anyhow::Result<InProcess> {
    let lane = bus.create(&lane_id()).await?;
    let stop = CancellationToken::new();
    let consumer = bus
        .consumer(&lane, forward, args.concurrency, stop.clone())
        .await?;
    let task = tokio::spawn(consumer);
    let mut publisher = bus.publisher(&lane).await?;
    warm_up(publisher.as_mut(), sink).await?;
    let throughput = throughput(
        publisher.as_mut(),
        sink,
        args.window.unwrap_or(bus.window()),
        args.events,
        size,
    )
    .await?;
    let latency = if with_latency {
        Some(latency(publisher.as_mut(), sink, args, size).await?)
    } else {
        None
    };
    stop.cancel();
    let _ = task.await;
    drop(publisher);
    bus.remove(&lane).await;
    Ok(InProcess {
        throughput,
        latency,
    })
}

/// A short unique name for a lane.
fn lane_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_string()
}

/// Publishes one event every 50 ms until one arrives: the path is connected and subscribed.
async fn warm_up(publisher: &mut dyn Publish, sink: &Sink) -> anyhow::Result<()> {
    let phase = next_phase();
    let tally = sink.begin(phase, 1, false);
    let deadline = Instant::now() + Duration::from_secs(30);
    while tally.unique() == 0 {
        if Instant::now() > deadline {
            bail!("no event arrived within 30s of warm-up");
        }
        publisher.send(payload(phase, 0, 64)).await?;
        publisher.flush().await?;
        tally
            .wait_for(1, Instant::now() + Duration::from_millis(50))
            .await;
    }
    Ok(())
}

struct Throughput {
    eps: f64,
    lost: u64,
    duplicates: u64,
}

/// `n` events as fast as the path takes them, at most `window` ahead of the function; events
/// per second from the first publish to the last receipt.
async fn throughput(
    publisher: &mut dyn Publish,
    sink: &Sink,
    window: u64,
    n: u64,
    size: usize,
) -> anyhow::Result<Throughput> {
    let phase = next_phase();
    let tally = sink.begin(phase, n, false);
    let first = now_ns();
    for seq in 0..n {
        if seq >= window && !progress(&tally, seq + 1 - window).await {
            break;
        }
        publisher.send(payload(phase, seq, size)).await?;
    }
    publisher.flush().await?;
    progress(&tally, n).await;
    let secs = (tally.last_ns().saturating_sub(first)) as f64 / 1e9;
    Ok(Throughput {
        eps: if secs > 0.0 {
            tally.unique() as f64 / secs
        } else {
            0.0
        },
        lost: n - tally.unique(),
        duplicates: tally.duplicates(),
    })
}

/// Waits until `target` events arrived; false when no new event arrived for [`STALL`].
async fn progress(tally: &Tally, target: u64) -> bool {
    loop {
        let seen = tally.unique();
        if tally.wait_for(target, Instant::now() + STALL).await {
            return true;
        }
        if tally.unique() == seen {
            return false;
        }
    }
}

/// Publish -> function latency at a fixed rate.
async fn latency(
    publisher: &mut dyn Publish,
    sink: &Sink,
    args: &Args,
    size: usize,
) -> anyhow::Result<Latency> {
    let n = args.rate * args.latency_secs;
    let phase = next_phase();
    let tally = sink.begin(phase, n, true);
    let mut tick = tokio::time::interval(Duration::from_nanos(1_000_000_000 / args.rate));
    for seq in 0..n {
        tick.tick().await;
        publisher.send(payload(phase, seq, size)).await?;
    }
    publisher.flush().await?;
    progress(&tally, n).await;
    Ok(Latency::of(&tally.sorted_latencies(), n))
}

/// RSS of fnbroker behind a slow function, after 10,000 waiting events and after `total`.
async fn backlog_rss(
    publisher: &mut dyn Publish,
    sink: &Sink,
    fb: &process::Fnbroker,
    total: u64,
    size: usize,
) -> anyhow::Result<(u64, u64)> {
    sink.set_slow(true);
    let phase = next_phase();
    sink.begin(phase, 0, false);
    let first = total.min(10_000);
    for seq in 0..first {
        publisher.send(payload(phase, seq, size)).await?;
    }
    publisher.flush().await?;
    let small = settled_rss(fb).await?;
    for seq in first..total {
        publisher.send(payload(phase, seq, size)).await?;
    }
    publisher.flush().await?;
    let large = settled_rss(fb).await?;
    Ok((small, large))
}

/// fnbroker's RSS once it stopped moving: ten samples 100 ms apart within 1% of each other
/// (fnbroker filled its window and its client's prefetch), or the last sample after 15 s.
async fn settled_rss(fb: &process::Fnbroker) -> anyhow::Result<u64> {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut samples = std::collections::VecDeque::with_capacity(10);
    loop {
        let rss = fb.rss()?;
        if samples.len() == 10 {
            samples.pop_front();
        }
        samples.push_back(rss);
        let (lo, hi) = samples
            .iter()
            .fold((u64::MAX, 0), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        if (samples.len() == 10 && hi - lo <= hi / 100) || Instant::now() > deadline {
            return Ok(rss);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The function server alone: POSTs from this process at the same concurrency.
async fn raw_http(sink: &Arc<Sink>, args: &Args) -> anyhow::Result<f64> {
    let mut publisher = buses::bus("http")?
        .publisher(&sink.url()["http://".len()..])
        .await?;
    warm_up(publisher.as_mut(), sink).await?;
    let size = args.size.first().copied().unwrap_or(256);
    let t = throughput(publisher.as_mut(), sink, u64::MAX, args.events, size).await?;
    if t.lost > 0 {
        bail!("{} events POSTed to the function server were lost", t.lost);
    }
    Ok(t.eps)
}
