//! End-to-end: how fnbroker is deployed. The systemd unit passes `systemd-analyze verify`, and
//! under `Type=notify` fnbroker tells the service manager it is ready (once `/readyz` would say
//! so), pings the watchdog, and says when it stops: checked on a real notification socket.

use crate::common;

use std::collections::HashSet;
use std::process::Command;
use std::time::Duration;

use common::nats::SHARED_URL;
use common::{Answer, FnServer, Fnbroker};
use tokio_util::sync::CancellationToken;

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
        &yaml!("connectors:\n  bus: { nats: { url: \"<SHARED_URL>\" } }\nfunctions:\n  f: { http: { url: \"<f_url>\" } }\ntriggers:\n  - { name: t, from: { connector: bus, topic: \"sd<topic>\" }, to: f }\n", SHARED_URL = SHARED_URL, f_url = server.url("/f"), topic = uuid::Uuid::new_v4().simple()),
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

fn uid() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// `run --watch` while 10,000 JetStream messages flow. The trigger `main` gets a new
/// function (swapped in, its subscription stays open), then a new `max_in_flight` (its
/// subscription drained and opened again); `gone` is removed, `added` added; between them a
/// file with an error is refused with its line and column and changes nothing. Every message
/// of `main` reaches a function exactly once, `added` gets its whole subject, exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_while_messages_flow_loses_and_duplicates_nothing() {
    const N: usize = 10_000;
    const ADDED: usize = 300;
    let server = FnServer::with(|_, _| Answer::ok().delay(Duration::from_millis(1))).await;
    let root = format!("r{}", uid());
    let stream = format!("S{}", uid());
    common::nats::create_stream(SHARED_URL, &stream, &[&format!("{root}.>")]).await;
    let (ga, gb, gc) = (uid(), uid(), uid());
    let head = yaml!(
        "connectors:\n  bus: { nats: { url: \"<SHARED_URL>\" } }\nfunctions:\n  f1: { http: { url: \"<f1_url>\" }, timeout: 2s }\n  f2: { http: { url: \"<f2_url>\" }, timeout: 2s }\n  gb: { http: { url: \"<gb_url>\" }, timeout: 2s }\n  gc: { http: { url: \"<gc_url>\" }, timeout: 2s }\ntriggers:\n",
        SHARED_URL = SHARED_URL,
        f1_url = server.url("/f1"),
        f2_url = server.url("/f2"),
        gb_url = server.url("/gb"),
        gc_url = server.url("/gc")
    );
    let main = |to: &str, max: usize| {
        yaml!(
            "  - { name: main, from: { connector: bus, stream: <stream>, topic: <root>.a, group: g<ga> }, to: <to>, delivery: { max_in_flight: <max> } }\n",
            stream = stream,
            root = root,
            ga = ga,
            to = to,
            max = max
        )
    };
    let gone = yaml!(
        "  - { name: gone, from: { connector: bus, stream: <stream>, topic: <root>.b, group: g<gb> }, to: gb }\n",
        stream = stream,
        root = root,
        gb = gb
    );
    let added = yaml!(
        "  - { name: added, from: { connector: bus, stream: <stream>, topic: <root>.c, group: g<gc> }, to: gc }\n",
        stream = stream,
        root = root,
        gc = gc
    );
    let v1 = format!("{head}{}{gone}", main("f1", 32));
    let v2 = format!("{head}{}{added}", main("f2", 32));
    let broken = yaml!(
        "<v2>  - { name: bad, from: { connector: nope, topic: x }, to: f1 }\n",
        v2 = v2
    );
    let v3 = format!("{head}{}{added}", main("f2", 16));
    common::nats::js_publish(
        SHARED_URL,
        (0..ADDED)
            .map(|i| (format!("{root}.c"), format!("c{i}").into_bytes()))
            .chain((0..100).map(|i| (format!("{root}.b"), format!("b{i}").into_bytes())))
            .collect(),
    )
    .await;
    let fb = Fnbroker::start_env(&v1, &[("FNBROKER_WATCH", "true")]).await;
    let first = fb.config_view().await;
    let publisher = tokio::spawn({
        let subject = format!("{root}.a");
        async move {
            for chunk in (0..N).collect::<Vec<_>>().chunks(250) {
                common::nats::js_publish(
                    SHARED_URL,
                    chunk
                        .iter()
                        .map(|i| (subject.clone(), i.to_string().into_bytes()))
                        .collect(),
                )
                .await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    let main_count = || server.count("/f1") + server.count("/f2");
    common::wait_for("a first part on f1", WAIT, || main_count() >= 1_500).await;
    fb.rewrite(&v2);
    let second = fb.wait_reloads(1, 0).await;
    assert_ne!(first["revision"], second["revision"]);
    let changes = &second["last_reload"]["changes"];
    assert_eq!(
        changes["updated"],
        serde_json::json!(["trigger main"]),
        "{second}"
    );
    assert_eq!(
        changes["added"],
        serde_json::json!(["trigger added"]),
        "{second}"
    );
    assert_eq!(
        changes["removed"],
        serde_json::json!(["trigger gone"]),
        "{second}"
    );

    common::wait_for("more on f2", WAIT, || server.count("/f2") >= 1_000).await;
    fb.rewrite(&broken);
    let refused = fb.wait_reloads(1, 1).await;
    assert_eq!(
        refused["revision"], second["revision"],
        "a refused file runs nothing"
    );
    let errors = refused["last_reload"]["errors"].to_string();
    assert!(
        errors.contains("fnbroker.yaml:") && errors.contains("nope"),
        "{refused}"
    );
    assert!(fb.logs().contains("configuration not reloaded"));

    common::wait_for("more on f2", WAIT, || server.count("/f2") >= 3_000).await;
    fb.rewrite(&v3);
    let third = fb.wait_reloads(2, 1).await;
    assert_eq!(
        third["last_reload"]["changes"]["replaced"],
        serde_json::json!(["trigger main"]),
        "{third}"
    );
    publisher.await.expect("publisher");

    let seen = |path: &str| -> Vec<String> {
        server
            .on(path)
            .iter()
            .map(|r| String::from_utf8_lossy(&r.body).into_owned())
            .collect()
    };
    // Every message, by its body. A message the server had put into the closed subscription's
    // last pull request comes back after `ack_wait` (14 s with the 2 s timeout).
    let distinct = || {
        server
            .on("/f1")
            .iter()
            .chain(server.on("/f2").iter())
            .map(|r| r.body.clone())
            .collect::<HashSet<_>>()
            .len()
    };
    common::wait_for("every message of main", Duration::from_secs(120), || {
        distinct() >= N
    })
    .await;
    common::wait_for("every message of added", WAIT, || {
        server.count("/gc") >= ADDED
    })
    .await;
    // Every message of main acknowledged at the server: none can come again.
    common::nats::wait_settled(SHARED_URL, &stream, &format!("g{ga}"), WAIT).await;
    let mut all = seen("/f1");
    all.extend(seen("/f2"));
    let unique: HashSet<&String> = all.iter().collect();
    println!(
        "reload under load: {} on f1, {} on f2, {} deliveries of {N}; added got {}",
        server.count("/f1"),
        server.count("/f2"),
        all.len(),
        server.count("/gc")
    );
    if unique.len() != N || all.len() != N {
        let mut count = std::collections::HashMap::new();
        for r in server.on("/f1").iter().chain(server.on("/f2").iter()) {
            count
                .entry(String::from_utf8_lossy(&r.body).into_owned())
                .or_insert_with(Vec::new)
                .push(format!("{:?}", r.headers));
        }
        let twice: Vec<_> = count.iter().filter(|(_, v)| v.len() > 1).collect();
        let missing: Vec<usize> = (0..N)
            .filter(|i| !count.contains_key(&i.to_string()))
            .collect();
        println!(
            "delivered twice: {twice:?}\nmissing: {missing:?}\n{}",
            fb.logs()
        );
    }
    assert_eq!(unique.len(), N, "every message of main arrived");
    assert_eq!(all.len(), N, "no message of main arrived twice");
    let added_seen = seen("/gc");
    assert_eq!(added_seen.len(), ADDED, "added: each once");
    assert_eq!(added_seen.iter().collect::<HashSet<_>>().len(), ADDED);
    let gone_seen = seen("/gb");
    assert_eq!(
        gone_seen.len(),
        gone_seen.iter().collect::<HashSet<_>>().len(),
        "gone: none twice"
    );
    let metrics = fb.metrics().await;
    assert!(
        metrics.contains("fnbroker_config_reloads_total{result=\"success\"} 2")
            && metrics.contains("fnbroker_config_reloads_total{result=\"failure\"} 1"),
        "{metrics}"
    );
}

/// SIGHUP reloads (it used to end the process with 129); a SIGHUP with nothing
/// changed changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_configuration() {
    let server = FnServer::start().await;
    let subject = format!("h{}", uid());
    let cfg = |path: &str| {
        yaml!(
            "connectors:\n  bus: { nats: { url: \"<SHARED_URL>\" } }\nfunctions:\n  f: { http: { url: \"<url>\" } }\ntriggers:\n  - { name: t, from: { connector: bus, topic: <subject> }, to: f }\n",
            SHARED_URL = SHARED_URL,
            url = server.url(path),
            subject = subject
        )
    };
    let fb = Fnbroker::start(&cfg("/one")).await;
    let send = |body: &'static str| {
        common::nats::publish(
            SHARED_URL,
            vec![(subject.clone(), async_nats::HeaderMap::new(), body.into())],
        )
    };
    send("1").await;
    server.wait_count("/one", 1, WAIT).await;
    fb.signal("HUP");
    let same = fb.wait_reloads(1, 0).await;
    assert_eq!(
        same["last_reload"]["changes"]["updated"],
        serde_json::json!([])
    );
    fb.rewrite(&cfg("/two"));
    fb.signal("HUP");
    let view = fb.wait_reloads(2, 0).await;
    assert_eq!(view["last_reload"]["cause"], "SIGHUP");
    send("2").await;
    server.wait_count("/two", 1, WAIT).await;
    assert_eq!(server.count("/one"), 1);
    let functions = reqwest::get(format!("http://127.0.0.1:{}/v1/functions", fb.admin))
        .await
        .expect("/v1/functions")
        .text()
        .await
        .expect("body");
    assert!(functions.contains("/two"), "{functions}");
}

/// A reload that fails part way (a JetStream trigger on a stream that does not exist, beside a
/// new HTTP ingress) does what it can and says what it could not, in the log and in
/// `/v1/config`'s `pending`; the file fixed and reloaded again, the new ingress listens. (The
/// ingress used to stay installed and never started: "nothing to change" until a restart.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_failed_part_way_is_finished_by_the_next() {
    let server = FnServer::start().await;
    let (one, two) = (common::free_port(), common::free_port());
    let base = yaml!(
        "connectors:\n  web: { http: { listen: \"127.0.0.1:<one>\" } }\n  bus: { nats: { url: \"<SHARED_URL>\" } }\nfunctions:\n  f: { http: { url: \"<f_url>\" } }\ntriggers:\n  - { name: w, from: { connector: web, topic: /w }, to: f }\n",
        one = one,
        SHARED_URL = SHARED_URL,
        f_url = server.url("/f")
    );
    let fixed = yaml!(
        "<head>  - { name: w2, from: { connector: web2, topic: /w2 }, to: f }\n",
        head = base.replace(
            "  bus: {",
            &yaml!(
                "  web2: { http: { listen: \"127.0.0.1:<two>\" } }\n  bus: {",
                two = two
            )
        )
    );
    let broken = yaml!(
        "<fixed>  - { name: js, from: { connector: bus, stream: NOSUCH<uid>, topic: nope.x, group: g }, to: f }\n",
        fixed = fixed,
        uid = uid()
    );
    let fb = Fnbroker::start(&base).await;
    fb.rewrite(&broken);
    fb.signal("HUP");
    let failed = fb.wait_reloads(0, 1).await;
    let pending = failed["pending"].to_string();
    assert!(
        pending.contains("js"),
        "pending names the trigger: {failed}"
    );
    fb.rewrite(&fixed);
    fb.signal("HUP");
    let done = fb.wait_reloads(1, 1).await;
    assert_eq!(done["pending"], serde_json::json!([]), "{done}");
    let post = |port: u16, path: &'static str| {
        reqwest::Client::new()
            .post(format!("http://127.0.0.1:{port}{path}"))
            .header("content-type", "text/plain")
            .body("x")
            .send()
    };
    let answer = post(two, "/w2")
        .await
        .unwrap_or_else(|e| panic!("the new ingress does not listen: {e}\n{}", fb.logs()));
    assert!(answer.status().is_success(), "{}", answer.status());
    let answer = post(one, "/w").await.expect("the first ingress");
    assert!(answer.status().is_success(), "{}", answer.status());
    server.wait_count("/f", 2, WAIT).await;
}

/// `run --watch` with the configuration in a folder where logs are written without pause: each
/// edit of the file is its own reload within a second or two, an invalid edit in the middle is
/// seen and refused, and the log writes next to it trigger nothing. (The watcher used to wait
/// for the whole folder to be quiet: no reload at all while the log was written.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_hears_the_file_not_the_logs_beside_it() {
    let server = FnServer::start().await;
    let port = common::free_port();
    let cfg = |path: &str| {
        yaml!(
            "connectors:\n  web: { http: { listen: \"127.0.0.1:<port>\" } }\nfunctions:\n  f: { http: { url: \"<url>\" } }\ntriggers:\n  - { name: t, from: { connector: web, topic: /in }, to: f }\n",
            port = port,
            url = server.url(path)
        )
    };
    let fb = Fnbroker::start_env(&cfg("/one"), &[("FNBROKER_WATCH", "true")]).await;
    // A log written every 20 ms in the same folder, for as long as the test runs.
    let noise = fb.dir.path().join("app.log");
    let writing = CancellationToken::new();
    let writer = tokio::spawn({
        let writing = writing.clone();
        async move {
            let mut n = 0u64;
            while !writing.is_cancelled() && n < 5_000 {
                n += 1;
                let line = format!("line {n}\n");
                let mut text = std::fs::read_to_string(&noise).unwrap_or_default();
                text.push_str(&line);
                std::fs::write(&noise, text).expect("write the log");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let view = fb.config_view().await;
    assert_eq!(
        view["reloads"]["succeeded"], 0,
        "the log alone reloads nothing: {view}"
    );
    fb.rewrite(&cfg("/two"));
    fb.wait_reloads(1, 0).await;
    fb.rewrite("triggers: [ { name: t, from: { connector: nope, topic: x }, to: f } ]\n");
    let refused = fb.wait_reloads(1, 1).await;
    assert_eq!(refused["last_reload"]["result"], "failure", "{refused}");
    fb.rewrite(&cfg("/three"));
    let applied = fb.wait_reloads(2, 1).await;
    assert_eq!(applied["last_reload"]["cause"], "file changed", "{applied}");
    writing.cancel();
    writer.await.expect("writer");
    let answer = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/in"))
        .header("content-type", "text/plain")
        .body("x")
        .send()
        .await
        .expect("post");
    assert!(answer.status().is_success(), "{}", answer.status());
    server.wait_count("/three", 1, WAIT).await;
    assert_eq!(server.count("/one") + server.count("/two"), 0);
}

/// The repository's root.
fn repo() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The static binary `scripts/release.sh` built (`scripts/test.sh` runs it before the tests).
fn static_binary() -> std::path::PathBuf {
    let path = repo().join("dist/fnbroker");
    assert!(
        path.exists(),
        "{} is missing: scripts/release.sh builds it (scripts/test.sh runs it first)",
        path.display()
    );
    path
}

/// Runs `cmd`, failing the test with its output unless it succeeds; returns its stdout.
fn run_ok(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// buildah with a storage of its own (vfs: no overlay mounts needed), removed with the test.
struct Buildah {
    dir: tempfile::TempDir,
}

impl Buildah {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("buildah");
        cmd.arg("--storage-driver=vfs")
            .arg("--root")
            .arg(self.dir.path().join("storage"))
            .arg("--runroot")
            .arg(self.dir.path().join("run"))
            .args(args);
        cmd
    }
}

impl Drop for Buildah {
    fn drop(&mut self) {
        let _ = self.cmd(&["umount", "--all"]).output();
        let _ = self.cmd(&["rm", "--all"]).output();
        let _ = self.cmd(&["rmi", "--all", "--force"]).output();
    }
}

/// The static binary is static, and the Dockerfile's runtime stage, built by buildah
/// from it (base images cannot be pulled here, and the runtime stage needs none: it is `FROM
/// scratch`), makes an image whose root filesystem runs fnbroker as its non-root user against
/// a real JetStream, and stops it cleanly on SIGTERM. The binary runs in that root filesystem
/// with chroot: podman cannot start containers here (crun fails to set `RLIMIT_NPROC` in this
/// sandbox), `buildah run` kills its child on SIGTERM, and chroot runs the image's files as they
/// are, which is what is under test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_root_filesystem_runs_the_static_binary() {
    let binary = static_binary();
    let ldd = Command::new("ldd").arg(&binary).output().expect("ldd");
    let verdict = format!(
        "{}{}",
        String::from_utf8_lossy(&ldd.stdout),
        String::from_utf8_lossy(&ldd.stderr)
    );
    assert!(
        verdict.contains("statically linked") || verdict.contains("not a dynamic executable"),
        "ldd: {verdict}"
    );

    // The build context the runtime stage copies from: what the build stage leaves in /out.
    let context = tempfile::tempdir().expect("tempdir");
    let out = context.path().join("out");
    std::fs::create_dir_all(&out).expect("out");
    std::fs::copy(&binary, out.join("fnbroker")).expect("copy binary");
    for file in ["fnbroker.yaml", "passwd", "group"] {
        std::fs::copy(repo().join("deploy/container").join(file), out.join(file)).expect(file);
    }
    std::fs::copy(
        "/etc/ssl/certs/ca-certificates.crt",
        out.join("ca-certificates.crt"),
    )
    .expect("CA certificates (Debian's ca-certificates)");
    let dockerfile = std::fs::read_to_string(repo().join("Dockerfile")).expect("Dockerfile");
    let runtime = dockerfile
        .split_once("FROM scratch AS runtime")
        .map(|(_, stage)| format!("FROM scratch AS runtime{stage}"))
        .expect("a `FROM scratch AS runtime` stage");
    let containerfile = context.path().join("Containerfile");
    std::fs::write(
        &containerfile,
        runtime
            .replace("--from=build ", "")
            .replace(" /out/", " out/"),
    )
    .expect("Containerfile");

    let buildah = Buildah::new();
    let tag = format!("localhost/fnbroker-test-{}", uid());
    run_ok(
        buildah
            .cmd(&["build", "--isolation", "chroot", "--tag", &tag, "--file"])
            .arg(&containerfile)
            .arg(context.path()),
    );
    let inspect = run_ok(&mut buildah.cmd(&["inspect", "--type", "image", &tag]));
    let image: serde_json::Value = serde_json::from_str(&inspect).expect("inspect JSON");
    let config = &image["OCIv1"]["config"];
    assert_eq!(config["User"], "65532:65532", "{config}");
    assert!(config["ExposedPorts"]["9464/tcp"].is_object(), "{config}");
    assert_eq!(
        config["Entrypoint"],
        serde_json::json!(["/usr/local/bin/fnbroker"])
    );
    assert!(
        config["Env"]
            .to_string()
            .contains("FNBROKER_CONFIG=/etc/fnbroker/fnbroker.yaml"),
        "{config}"
    );
    let container = run_ok(&mut buildah.cmd(&["from", &tag])).trim().to_string();
    let rootfs = std::path::PathBuf::from(
        run_ok(&mut buildah.cmd(&["mount", &container]))
            .trim()
            .to_string(),
    );
    let in_image = |args: &[&str]| {
        let mut cmd = Command::new("chroot");
        cmd.arg("--userspec=65532:65532")
            .arg(&rootfs)
            .arg("/usr/local/bin/fnbroker")
            .args(args);
        cmd
    };
    let said = run_ok(&mut in_image(&[
        "validate",
        "-c",
        "/etc/fnbroker/fnbroker.yaml",
    ]));
    assert!(said.contains("ok"), "{said}");

    // A JetStream stream to a function, run from the image's files as its user.
    let server = FnServer::start().await;
    let subject = format!("img{}", uid());
    let stream = format!("S{}", uid());
    common::nats::create_stream(SHARED_URL, &stream, &[&subject]).await;
    let admin = common::free_port();
    std::fs::create_dir_all(rootfs.join("tmp")).expect("tmp");
    std::fs::write(
        rootfs.join("tmp/fnbroker.yaml"),
        yaml!("connectors:\n  bus: { nats: { url: \"<SHARED_URL>\" } }\nfunctions:\n  f: { http: { url: \"<f_url>\" } }\ntriggers:\n  - { name: t, from: { connector: bus, stream: <stream>, topic: <subject>, group: g<uid> }, to: f }\nadmin: { listen: 127.0.0.1:<admin> }\nshutdown_timeout: 5s\n", SHARED_URL = SHARED_URL, f_url = server.url("/f"), stream = stream, subject = subject, uid = uid(), admin = admin),
    )
    .expect("config");
    let log = tempfile::NamedTempFile::new().expect("log");
    let mut child = in_image(&["run", "-c", "/tmp/fnbroker.yaml"])
        .stdout(std::process::Stdio::null())
        .stderr(log.reopen().expect("log"))
        .spawn()
        .expect("chroot");
    let logs = || std::fs::read_to_string(log.path()).unwrap_or_default();
    let ready = format!("http://127.0.0.1:{admin}/readyz");
    let deadline = std::time::Instant::now() + WAIT;
    while !reqwest::get(&ready)
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(
            std::time::Instant::now() < deadline && child.try_wait().ok().flatten().is_none(),
            "fnbroker from the image did not become ready:\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).expect("status");
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("65532")),
        "runs as the image's user:\n{status}"
    );
    common::nats::js_publish(
        SHARED_URL,
        (0..100)
            .map(|i| (subject.clone(), i.to_string().into_bytes()))
            .collect(),
    )
    .await;
    server.wait_count("/f", 100, WAIT).await;
    let pid = child.id().to_string();
    run_ok(Command::new("kill").args(["-TERM", &pid]));
    let exit = child.wait().expect("wait");
    assert!(exit.success(), "{exit}:\n{}", logs());
    assert_eq!(server.count("/f"), 100);
}

/// Every manifest of deploy/kubernetes validates strictly and offline (the Kubernetes
/// schemas of kubernetes-validate, the KEDA CRD's schema), the validation does refuse an
/// unknown field, and the configuration the ConfigMap carries is a valid fnbroker
/// configuration whose `shutdown_timeout` fits in the pod's grace period.
#[test]
fn the_kubernetes_manifests_validate() {
    let python = std::env::var("HOME")
        .map(|h| format!("{h}/.cache/fnbroker/venv/bin/python3"))
        .expect("HOME");
    let script = repo().join("scripts/validate-manifests.py");
    let k8s = repo().join("deploy/kubernetes");
    let said = run_ok(
        Command::new(&python)
            .arg(&script)
            .arg(k8s.join("base"))
            .arg(k8s.join("base/secret.example.yaml"))
            .arg(k8s.join("scaling")),
    );
    for kind in [
        "Deployment fnbroker",
        "Service fnbroker",
        "PodDisruptionBudget fnbroker",
        "ConfigMap fnbroker-config",
        "Secret fnbroker-secrets",
        "HorizontalPodAutoscaler fnbroker",
        "ScaledObject fnbroker-kafka",
        "ScaledObject fnbroker-backlog",
    ] {
        assert!(said.contains(kind), "{kind} not validated:\n{said}");
    }

    // The validators refuse what the API server's strict field validation refuses.
    let dir = tempfile::tempdir().expect("tempdir");
    let deployment = std::fs::read_to_string(k8s.join("base/deployment.yaml")).expect("read");
    let scaled = std::fs::read_to_string(k8s.join("scaling/keda-kafka.yaml")).expect("read");
    for (name, text) in [
        (
            "deployment.yaml",
            deployment.replace("  replicas: 2", "  replicaz: 2"),
        ),
        (
            "keda.yaml",
            scaled.replace("  maxReplicaCount: 12", "  maxReplicaCountt: 12"),
        ),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write");
        let out = Command::new(&python)
            .arg(&script)
            .arg(&path)
            .output()
            .expect("python");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("was unexpected"),
            "{name} with an unknown field passed: {err}"
        );
    }

    // The ConfigMap's configuration, with its secret file present.
    let token = dir.path().join("nats-token");
    std::fs::write(&token, "s3cret").expect("token");
    let config = std::fs::read_to_string(k8s.join("base/fnbroker.yaml"))
        .expect("read")
        .replace(
            "/etc/fnbroker-secrets/nats-token",
            &token.display().to_string(),
        );
    let path = dir.path().join("fnbroker.yaml");
    std::fs::write(&path, &config).expect("write");
    run_ok(
        Command::new(common::binary())
            .args(["validate", "-c"])
            .arg(&path),
    );
    let deployment: serde_json::Value =
        serde_saphyr::from_str(&deployment).expect("deployment YAML");
    let pod = &deployment["spec"]["template"]["spec"];
    let grace = pod["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("grace");
    let pause = pod["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_u64()
        .expect("preStop sleep");
    assert!(
        config.contains("shutdown_timeout: 30s") && grace > 30 + pause,
        "terminationGracePeriodSeconds {grace} must exceed shutdown_timeout 30 s + preStop {pause} s"
    );
    assert_eq!(
        pod["containers"][0]["args"],
        serde_json::json!(["run", "--watch", "-c", "/etc/fnbroker/fnbroker.yaml"]),
        "the pods reload the ConfigMap when it changes"
    );
}
