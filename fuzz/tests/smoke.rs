//! A short, bounded fuzz run of every target, part of the test command (the long runs are
//! `cargo run --release -p fnbroker-fuzz -- --secs 600`).

#[test]
fn every_target_survives_a_short_run() {
    for t in fnbroker_fuzz::TARGETS {
        if let Err(crash) = fnbroker_fuzz::run(t, std::time::Duration::from_secs(20), 3_000, 7) {
            panic!(
                "{}: {}\ninput: {:?}",
                t.name,
                crash.reason,
                String::from_utf8_lossy(&crash.input)
            );
        }
    }
}
