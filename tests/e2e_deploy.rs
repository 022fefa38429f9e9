//! End-to-end: how fnbroker is deployed. The systemd unit passes `systemd-analyze verify`, and
//! under `Type=notify` fnbroker tells the service manager it is ready (once `/readyz` would say
//! so), pings the watchdog, and says when it stops: checked on a real notification socket.

mod common;

use std::process::Command;
use std::time::Duration;

use common::nats::SHARED_URL;
use common::{FnServer, Fnbroker};

const WAIT: Duration = Duration::from_secs(30);

/// The unit, with its `ExecStart` pointing at the binary these tests built (verify checks that
/// the program exists), passes `systemd-analyze verify` without a word.
#[test]
fn the_systemd_unit_verifies_clean() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/systemd/fnbroker.service"
    ))
    .expect("deploy/systemd/fnbroker.service");
    assert!(unit.contains("Type=notify") && unit.contains("DynamicUser=yes"));
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("fnbroker.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/fnbroker", common::binary()),
    )
    .expect("write");
    let out = Command::new("systemd-analyze")
        .args(["verify"])
        .arg(&path)
        .output()
        .expect("systemd-analyze (Debian's systemd package)");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify: {said}"
    );
}

/// READY=1 once every connector is ready, WATCHDOG=1 at half of `WATCHDOG_USEC`, STOPPING=1 on
/// SIGTERM, on the socket `NOTIFY_SOCKET` names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_type_notify_fnbroker_says_ready_pings_the_watchdog_and_says_stopping() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket_path = dir.path().join("notify.sock");
    let socket = tokio::net::UnixDatagram::bind(&socket_path).expect("bind");
    let server = FnServer::start().await;
    let mut fb = Fnbroker::start_env(
        &format!(
            "connectors:\n  bus: {{ nats: {{ url: \"{SHARED_URL}\" }} }}\nfunctions:\n  f: {{ http: {{ url: \"{}\" }} }}\ntriggers:\n  - {{ name: t, from: {{ connector: bus, topic: \"sd{}\" }}, to: f }}\n",
            server.url("/f"),
            uuid::Uuid::new_v4().simple()
        ),
        &[
            ("NOTIFY_SOCKET", socket_path.to_str().expect("path")),
            ("WATCHDOG_USEC", "200000"),
        ],
    )
    .await;
    let mut seen: Vec<String> = Vec::new();
    let mut buf = vec![0u8; 4096];
    let deadline = tokio::time::Instant::now() + WAIT;
    while seen.iter().filter(|m| m.as_str() == "WATCHDOG=1").count() < 3 {
        let n = tokio::time::timeout_at(deadline, socket.recv(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("notifications so far: {seen:?}"))
            .expect("recv");
        seen.push(String::from_utf8_lossy(&buf[..n]).trim().to_string());
    }
    // (Watchdog pings may come before READY=1: systemd takes them at any time.)
    assert_eq!(
        seen.iter().filter(|m| m.as_str() == "READY=1").count(),
        1,
        "ready once: {seen:?}"
    );
    assert!(
        seen.iter().all(|m| m == "READY=1" || m == "WATCHDOG=1"),
        "{seen:?}"
    );
    fb.signal("TERM");
    let stopping = loop {
        let n = tokio::time::timeout_at(deadline, socket.recv(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("no STOPPING=1 after {seen:?}"))
            .expect("recv");
        let m = String::from_utf8_lossy(&buf[..n]).trim().to_string();
        if m != "WATCHDOG=1" {
            break m;
        }
    };
    assert_eq!(stopping, "STOPPING=1");
    assert!(fb.wait_exit(WAIT).await.success());
}
