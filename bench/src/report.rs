//! The report: one markdown table per run, with the machine and revision it was measured on.

use std::fmt::Write as _;

/// Publish -> function latency percentiles, in microseconds.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Latency {
    /// Median.
    pub(crate) p50: f64,
    /// 99th percentile.
    pub(crate) p99: f64,
    /// 99.9th percentile.
    pub(crate) p999: f64,
    /// Events that did not arrive.
    pub(crate) lost: u64,
}

impl Latency {
    /// Percentiles of sorted nanosecond samples, `expected` of which were sent.
    pub(crate) fn of(sorted_ns: &[u64], expected: u64) -> Latency {
        let at = |q: f64| {
            if sorted_ns.is_empty() {
                return f64::NAN;
            }
            let i = ((sorted_ns.len() as f64 * q).ceil() as usize).clamp(1, sorted_ns.len()) - 1;
            sorted_ns[i] as f64 / 1e3
        };
        Latency {
            p50: at(0.50),
            p99: at(0.99),
            p999: at(0.999),
            lost: expected.saturating_sub(sorted_ns.len() as u64),
        }
    }
}

/// One connector at one payload size.
#[derive(Debug)]
pub(crate) struct Row {
    /// Connector name.
    pub(crate) connector: &'static str,
    /// Payload bytes.
    pub(crate) size: usize,
    /// fnbroker's throughput, events per second: the median of the runs.
    pub(crate) fnbroker_eps: f64,
    /// The direct path's throughput: the median of the runs.
    pub(crate) direct_eps: f64,
    /// The alternated runs at full throughput (direct, then fnbroker), in order.
    pub(crate) runs: Vec<Pair>,
    /// The broker's consume rate alone.
    pub(crate) raw_eps: f64,
    /// fnbroker's latency at the fixed rate.
    pub(crate) latency: Latency,
    /// The direct path's latency at the fixed rate.
    pub(crate) direct_latency: Latency,
    /// fnbroker's CPU seconds per 100,000 events at full throughput: the median of the runs.
    pub(crate) cpu_per_100k: f64,
    /// fnbroker's RSS just after it was ready.
    pub(crate) idle_rss: Option<u64>,
    /// fnbroker's peak RSS after the throughput runs: the highest of the runs.
    pub(crate) peak_rss: Option<u64>,
    /// fnbroker's anonymous RSS just after it was ready (without the mapped program).
    pub(crate) idle_anon: Option<u64>,
    /// fnbroker's highest anonymous RSS in the throughput runs.
    pub(crate) peak_anon: Option<u64>,
    /// fnbroker's RSS behind a slow function with 10,000 and with the whole backlog waiting.
    pub(crate) backlog_rss: Option<(u64, u64)>,
    /// From process start to ready.
    pub(crate) ready_ms: f64,
    /// Events of the throughput runs that never arrived (any path).
    pub(crate) lost: u64,
    /// Events fnbroker delivered more than once.
    pub(crate) duplicates: u64,
    /// With `--traced`: fnbroker's throughput and CPU s per 100k with every event traced.
    pub(crate) traced: Option<(f64, f64)>,
    /// With `--against`: the other build, at full throughput.
    pub(crate) against: Option<Other>,
    /// With `--batch`: fnbroker batching that many events per call, at full throughput.
    pub(crate) batches: Vec<(usize, Other)>,
}

/// One direct run and the fnbroker run after it, at full throughput.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pair {
    /// The direct path's events per second.
    pub(crate) direct_eps: f64,
    /// fnbroker's events per second.
    pub(crate) fnbroker_eps: f64,
    /// fnbroker's CPU seconds per 100,000 events.
    pub(crate) cpu: f64,
    /// fnbroker's peak RSS.
    pub(crate) peak_rss: Option<u64>,
    /// fnbroker's peak anonymous RSS (sampled).
    pub(crate) peak_anon: Option<u64>,
}

/// The median of values and their range.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Spread {
    /// The median (of an even count, the mean of the middle two).
    pub(crate) median: f64,
    /// The smallest value.
    pub(crate) min: f64,
    /// The largest value.
    pub(crate) max: f64,
}

impl Spread {
    /// The spread of `values`; NaN everywhere when there are none.
    pub(crate) fn of(values: impl IntoIterator<Item = f64>) -> Spread {
        let mut v: Vec<f64> = values.into_iter().filter(|x| !x.is_nan()).collect();
        if v.is_empty() {
            return Spread {
                median: f64::NAN,
                min: f64::NAN,
                max: f64::NAN,
            };
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Spread {
            median,
            min: v[0],
            max: v[n - 1],
        }
    }

    /// `median (min-max)` with `digits` decimals, or the value alone when there was one.
    fn show(&self, digits: usize) -> String {
        if self.median.is_nan() {
            "n/a".into()
        } else if self.min == self.max {
            format!("{:.digits$}", self.median)
        } else {
            format!(
                "{:.digits$} ({:.digits$}–{:.digits$})",
                self.median, self.min, self.max
            )
        }
    }
}

/// A second fnbroker run of a row (traced, or another build).
#[derive(Debug, Clone)]
pub(crate) struct Other {
    /// Events per second at full throughput.
    pub(crate) eps: f64,
    /// CPU seconds per 100,000 events.
    pub(crate) cpu: f64,
    /// Events that never arrived.
    pub(crate) lost: u64,
    /// Events delivered more than once.
    pub(crate) duplicates: u64,
    /// RSS just after it was ready.
    pub(crate) idle_rss: Option<u64>,
    /// Peak RSS after the throughput run.
    pub(crate) peak_rss: Option<u64>,
    /// Highest anonymous RSS in the throughput run.
    pub(crate) peak_anon: Option<u64>,
}

impl Row {
    pub(crate) fn new(connector: &'static str, size: usize) -> Row {
        Row {
            connector,
            size,
            fnbroker_eps: 0.0,
            direct_eps: 0.0,
            runs: Vec::new(),
            raw_eps: 0.0,
            latency: Latency::default(),
            direct_latency: Latency::default(),
            cpu_per_100k: 0.0,
            idle_rss: None,
            peak_rss: None,
            idle_anon: None,
            peak_anon: None,
            backlog_rss: None,
            ready_ms: 0.0,
            lost: 0,
            duplicates: 0,
            traced: None,
            against: None,
            batches: Vec::new(),
        }
    }

    /// Events that never arrived, in any measurement of this row.
    pub(crate) fn lost_total(&self) -> u64 {
        self.lost + self.latency.lost + self.direct_latency.lost
    }

    /// Adds a pair of runs and updates the medians.
    pub(crate) fn add_run(&mut self, pair: Pair) {
        self.runs.push(pair);
        self.fnbroker_eps = Spread::of(self.runs.iter().map(|p| p.fnbroker_eps)).median;
        self.direct_eps = Spread::of(self.runs.iter().map(|p| p.direct_eps)).median;
        self.cpu_per_100k = self.cpu_spread().median;
        self.peak_rss = self.runs.iter().filter_map(|p| p.peak_rss).max();
        self.peak_anon = self.runs.iter().filter_map(|p| p.peak_anon).max();
    }

    /// fnbroker / direct of each pair of runs: the median is the row's ratio, the range its
    /// spread.
    pub(crate) fn ratio_spread(&self) -> Spread {
        Spread::of(self.runs.iter().map(|p| {
            if p.direct_eps > 0.0 {
                p.fnbroker_eps / p.direct_eps
            } else {
                f64::NAN
            }
        }))
    }

    /// The row's ratio: the median of the pairs' ratios.
    pub(crate) fn ratio(&self) -> f64 {
        self.ratio_spread().median
    }

    /// fnbroker's CPU seconds per 100,000 events over the runs.
    pub(crate) fn cpu_spread(&self) -> Spread {
        Spread::of(self.runs.iter().map(|p| p.cpu))
    }
}

fn mib(b: Option<u64>) -> String {
    b.map_or_else(|| "n/a".into(), |b| format!("{:.1}", b as f64 / 1048576.0))
}

/// An RSS with its anonymous part in brackets.
fn with_anon(rss: Option<u64>, anon: Option<u64>) -> String {
    match anon {
        Some(_) => format!("{} ({})", mib(rss), mib(anon)),
        None => mib(rss),
    }
}

fn ms(us: f64) -> String {
    if us.is_nan() {
        "n/a".into()
    } else {
        format!("{:.2}", us / 1e3)
    }
}

/// A one-line summary for the progress output.
pub(crate) fn row_line(r: &Row) -> String {
    format!(
        "bench: {} {} B: fnbroker {:.0}/s, direct {:.0}/s ({:.2}), raw {:.0}/s, p99 {} ms (direct {} ms), {:.2} CPU s/100k, peak {} MiB, ready {:.0} ms, lost {}",
        r.connector,
        r.size,
        r.fnbroker_eps,
        r.direct_eps,
        r.ratio(),
        r.raw_eps,
        ms(r.latency.p99),
        ms(r.direct_latency.p99),
        r.cpu_per_100k,
        mib(r.peak_rss),
        r.ready_ms,
        r.lost_total()
    )
}

/// The markdown report.
pub(crate) fn render(rows: &[Row], http_raw: f64, settings: &str) -> String {
    let mut s = String::new();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let _ = writeln!(s, "# fnbroker benchmark\n");
    let _ = writeln!(
        s,
        "- when: {} (UTC)\n- revision: {}\n- machine: {cores} cores, {}\n- settings: {settings}\n- the function server alone (POSTs from the bench, same concurrency): {http_raw:.0} events/s\n- brokers: {}\n",
        utc_now(),
        revision(),
        memory(),
        broker_settings()
    );
    let _ = writeln!(
        s,
        "| connector | payload | fnbroker ev/s | direct ev/s | ratio (range) | raw consume ev/s | p50 ms | p99 ms | p99.9 ms | direct p99 ms | CPU s / 100k (range) | idle RSS MiB (anon) | peak RSS MiB (anon) | backlog RSS MiB (10k → all) | ready ms | lost | dup |"
    );
    let _ = writeln!(
        s,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for r in rows {
        let backlog = r.backlog_rss.map_or_else(
            || "n/a".to_string(),
            |(a, b)| format!("{} → {}", mib(Some(a)), mib(Some(b))),
        );
        let _ = writeln!(
            s,
            "| {} | {} B | {:.0} | {:.0} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {:.0} | {} | {} |",
            r.connector,
            r.size,
            r.fnbroker_eps,
            r.direct_eps,
            r.ratio_spread().show(2),
            r.raw_eps,
            ms(r.latency.p50),
            ms(r.latency.p99),
            ms(r.latency.p999),
            ms(r.direct_latency.p99),
            r.cpu_spread().show(2),
            with_anon(r.idle_rss, r.idle_anon),
            with_anon(r.peak_rss, r.peak_anon),
            backlog,
            r.ready_ms,
            r.lost_total(),
            r.duplicates
        );
    }
    let _ = writeln!(
        s,
        "\nratio = fnbroker / direct, both measured in this run: the throughput runs alternate (direct, fnbroker, direct, fnbroker...); ev/s are the medians of the runs, the ratio is the median of each pair's ratio with the range of the pairs in brackets, CPU the median with its range, peak RSS the highest. RSS is the whole resident set (`VmRSS`, peak `VmHWM`); in brackets its anonymous part (`RssAnon`: heap, stacks, relocated data; the peak sampled every 10 ms), the rest being the mapped program, which the page cache holds and shares. Throughput is events from the first publish to the last receipt, with a window of unconfirmed events per broker (Mosquitto 1,000, core NATS 2,000, HTTP 5,000, others 20,000). Latency is publish -> function at the fixed rate. CPU and RSS are fnbroker's own (from /proc). The backlog is measured for brokers that hold one (Kafka, JetStream, AMQP) behind a function that takes 1 s per event."
    );
    if rows.iter().any(|r| r.traced.is_some()) {
        let _ = writeln!(
            s,
            "\n## What tracing costs\n\nfnbroker with every event traced (sample ratio 1, spans exported by OTLP/HTTP to the bench's server) against the same fnbroker untraced, both in this run.\n\n| connector | payload | untraced ev/s | traced ev/s | ratio | untraced CPU s / 100k | traced CPU s / 100k | ratio |\n|---|---:|---:|---:|---:|---:|---:|---:|"
        );
        for r in rows {
            if let Some((eps, cpu)) = r.traced {
                let _ = writeln!(
                    s,
                    "| {} | {} B | {:.0} | {eps:.0} | {:.2} | {:.2} | {cpu:.2} | {:.2} |",
                    r.connector,
                    r.size,
                    r.fnbroker_eps,
                    eps / r.fnbroker_eps,
                    r.cpu_per_100k,
                    cpu / r.cpu_per_100k
                );
            }
        }
    }
    if rows.iter().any(|r| r.against.is_some()) {
        let _ = writeln!(
            s,
            "\n## Against the other build\n\nThe fnbroker above (`this`) against the `--against` binary (`other`), the same configuration at full throughput right after it, on a lane of its own. Ratios are other / this.\n\n| connector | payload | this ev/s | other ev/s | ratio | this CPU s / 100k | other CPU s / 100k | ratio | this idle / peak RSS MiB | other idle / peak RSS MiB |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        for r in rows {
            if let Some(o) = &r.against {
                let _ = writeln!(
                    s,
                    "| {} | {} B | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {} / {} | {} / {} |",
                    r.connector,
                    r.size,
                    r.fnbroker_eps,
                    o.eps,
                    o.eps / r.fnbroker_eps,
                    r.cpu_per_100k,
                    o.cpu,
                    o.cpu / r.cpu_per_100k,
                    mib(r.idle_rss),
                    mib(r.peak_rss),
                    mib(o.idle_rss),
                    mib(o.peak_rss)
                );
            }
        }
    }
    if rows.iter().any(|r| !r.batches.is_empty()) {
        let _ = writeln!(
            s,
            "\n## Batching\n\nfnbroker with `delivery.batch` (`max_events` as given, `max_wait: 5ms`), each batch size at full throughput on a lane of its own in this run; the function gets `application/cloudevents-batch+json`. Ratios are against the first batch size.\n\n| connector | payload | batch | ev/s | ratio | CPU s / 100k | ratio | peak RSS MiB |\n|---|---:|---:|---:|---:|---:|---:|---:|"
        );
        for r in rows {
            let Some((_, base)) = r.batches.first() else {
                continue;
            };
            for (n, o) in &r.batches {
                let _ = writeln!(
                    s,
                    "| {} | {} B | {n} | {:.0} | {:.2} | {:.2} | {:.2} | {} |",
                    r.connector,
                    r.size,
                    o.eps,
                    o.eps / base.eps,
                    o.cpu,
                    o.cpu / base.cpu,
                    mib(o.peak_rss)
                );
            }
        }
    }
    s
}

/// A file name for a report of `connectors`, stamped with the time.
pub(crate) fn file_name(connectors: &str) -> String {
    let stamp = utc_now().replace([' ', ':'], "-");
    format!("{stamp}-{}.md", connectors.replace(',', "+"))
}

fn utc_now() -> String {
    chrono::Utc::now().format("%Y-%m-%d %H:%M").to_string()
}

fn revision() -> String {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    let rev = git(&["rev-parse", "--short", "HEAD"]);
    let dirty = !git(&["status", "--porcelain", "--untracked-files=no"]).is_empty();
    if dirty {
        format!("{rev} (with uncommitted changes)")
    } else {
        rev
    }
}

fn memory() -> String {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or_else(
            || "memory unknown".into(),
            |k| format!("{:.0} GiB", k as f64 / 1048576.0),
        )
}

/// The broker settings that shape the numbers: Mosquitto's per-client limits as its
/// configuration sets them (or its defaults).
fn broker_settings() -> String {
    let conf = std::fs::read_to_string("/etc/mosquitto/mosquitto.conf").unwrap_or_default();
    let setting = |key: &str, default: &str| {
        conf.lines()
            .find_map(|l| l.trim().strip_prefix(key).map(|v| v.trim().to_string()))
            .unwrap_or_else(|| format!("{default} (default)"))
    };
    format!(
        "Mosquitto max_inflight_messages {}, max_queued_messages {}; MQTT at QoS 1, MQTT 5; Kafka is tansu 0.6 (memory storage), 1 partition; JetStream file storage; RabbitMQ durable queue, persistent messages, publisher confirms",
        setting("max_inflight_messages", "20"),
        setting("max_queued_messages", "1000")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads() {
        let s = Spread::of([3.0, 1.0, 2.0]);
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(Spread::of([1.0, 2.0, 4.0, 3.0]).median, 2.5);
        assert_eq!(s.show(2), "2.00 (1.00–3.00)");
        assert_eq!(Spread::of([0.5]).show(2), "0.50");
        assert!(Spread::of([]).median.is_nan());
        let mut r = Row::new("nats", 256);
        for (d, f) in [(100.0, 90.0), (100.0, 80.0), (50.0, 50.0)] {
            r.add_run(Pair {
                direct_eps: d,
                fnbroker_eps: f,
                cpu: 1.0,
                peak_rss: Some(d as u64),
                peak_anon: None,
            });
        }
        assert_eq!(r.ratio(), 0.9);
        assert_eq!(
            (r.fnbroker_eps, r.direct_eps, r.peak_rss),
            (80.0, 100.0, Some(100))
        );
    }

    #[test]
    fn percentiles() {
        let v: Vec<u64> = (1..=1000).map(|i| i * 1000).collect();
        let l = Latency::of(&v, 1000);
        assert_eq!(l.p50, 500.0);
        assert_eq!(l.p99, 990.0);
        assert_eq!(l.p999, 999.0);
        assert_eq!(l.lost, 0);
        assert_eq!(Latency::of(&v[..10], 20).lost, 10);
    }
}
