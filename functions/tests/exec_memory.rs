//! A command that floods stderr costs fnbroker a bounded amount of memory: stderr is read to its
//! end (so the command never blocks on a full pipe) but only its tail is kept. Counted with
//! `allocation-counter`'s per-thread global allocator, on a current-thread runtime so that all
//! the reading happens on the measured thread.
#![allow(missing_docs)]

use std::collections::BTreeMap;
use std::time::Duration;

use fnbroker_core::event::{PlainMessage, normalize};
use fnbroker_functions::{ExecInvoker, InvokeError, Invoker};

#[test]
fn a_stderr_flood_is_not_held_in_memory() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let event = normalize(
        PlainMessage {
            kind: "http",
            connector: "web",
            topic: "/t",
            id: Some("id-1".into()),
            ..Default::default()
        },
        Vec::new(),
    );
    let command = [
        "sh".to_string(),
        "-c".to_string(),
        "head -c 64000000 /dev/zero >&2; echo last words >&2; exit 3".to_string(),
    ];
    let invoker = ExecInvoker::new(&command, &BTreeMap::new(), &[]).expect("command");
    let mut outcome = None;
    let info = allocation_counter::measure(|| {
        outcome = Some(runtime.block_on(invoker.invoke(&event, Duration::from_secs(60))));
    });
    match outcome {
        Some(Err(InvokeError::Exit {
            code: Some(3),
            stderr,
        })) => {
            assert!(stderr.ends_with("last words"), "{stderr:?}");
            assert!(stderr.len() <= 2048 + 4, "{}", stderr.len());
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(
        info.bytes_max < 4 * 1024 * 1024,
        "64 MB of stderr peaked at {} bytes held",
        info.bytes_max
    );
}
