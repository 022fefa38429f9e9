//! Runs fuzz targets for a while: `fnbroker-fuzz [--secs N] [--seed S] [TARGET...]` (all targets
//! when none is named). Exits 1 with the shrunk input at the first crash.

use std::time::{Duration, Instant};

fn main() {
    let mut secs = 60u64;
    let mut seed = 0u64;
    let mut names: Vec<String> = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut number = |what: &str| {
            args.next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or_else(|| fail(&format!("{what} needs a whole number")))
        };
        match arg.as_str() {
            "--secs" => secs = number("--secs"),
            "--seed" => seed = number("--seed"),
            "--input" => {
                // Replays one input (a file) through the targets named before it.
                let path = args.next().unwrap_or_else(|| fail("--input needs a file"));
                let data = std::fs::read(&path)
                    .unwrap_or_else(|e| fail(&format!("cannot read {path}: {e}")));
                for n in &names {
                    let t = fnbroker_fuzz::target(n)
                        .unwrap_or_else(|| fail(&format!("no target `{n}`")));
                    let data = data.clone();
                    std::thread::Builder::new()
                        .stack_size(2 << 20)
                        .spawn(move || (t.run)(&data))
                        .unwrap_or_else(|e| fail(&format!("cannot start a thread: {e}")))
                        .join()
                        .unwrap_or_else(|_| fail("the target panicked"));
                    println!("{n}: {path}: no crash");
                }
                return;
            }
            "-h" | "--help" => {
                let all: Vec<&str> = fnbroker_fuzz::TARGETS.iter().map(|t| t.name).collect();
                println!(
                    "usage: fnbroker-fuzz [--secs N] [--seed S] [TARGET...]\n       fnbroker-fuzz TARGET... --input FILE   (replays one input)\ntargets: {}",
                    all.join(", ")
                );
                return;
            }
            name => names.push(name.to_string()),
        }
    }
    let targets: Vec<&fnbroker_fuzz::Target> = if names.is_empty() {
        fnbroker_fuzz::TARGETS.iter().collect()
    } else {
        names
            .iter()
            .map(|n| fnbroker_fuzz::target(n).unwrap_or_else(|| fail(&format!("no target `{n}`"))))
            .collect()
    };
    for t in targets {
        let started = Instant::now();
        // On a thread with the stack of a tokio worker (2 MiB), where the decoders run.
        let run = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || fnbroker_fuzz::run(t, Duration::from_secs(secs), u64::MAX, seed))
            .unwrap_or_else(|e| fail(&format!("cannot start a thread: {e}")))
            .join()
            .unwrap_or_else(|_| fail("the runner panicked"));
        match run {
            Ok(stats) => println!(
                "{}: {} inputs in {:.0?}, 0 crashes",
                t.name,
                stats.cases,
                started.elapsed()
            ),
            Err(crash) => {
                println!(
                    "{}: CRASH after {:.0?}: {}\ninput ({} bytes): {:?}",
                    t.name,
                    started.elapsed(),
                    crash.reason,
                    crash.input.len(),
                    String::from_utf8_lossy(&crash.input)
                );
                std::process::exit(1);
            }
        }
    }
}

fn fail(message: &str) -> ! {
    eprintln!("fnbroker-fuzz: {message}");
    std::process::exit(2);
}
