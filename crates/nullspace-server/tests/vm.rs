//! Templates as snapshots of a running, ready microVM, end to end: the real server, BuildKit,
//! QEMU (TCG here) and the Debian kernel from the test environment. The start commands serve
//! HTTP with busybox from the fixtures' local apt repository; every probe and request goes to
//! the guest's own loopback.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{call, registry, start_build, wait_status, Server, ALICE};
use serde_json::{json, Value};

/// The fixture with busybox installed (BuildKit caches this step across builds and tests).
fn dockerfile() -> String {
    let localapt = std::env::var("NULLSPACE_FIXTURE_LOCALAPT_REF")
        .unwrap_or_else(|_| format!("{}/nullspace/fixture-bookworm-localapt:latest", registry()));
    format!(
        "FROM {localapt}\n\
         RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends busybox \
         && mkdir -p /srv/www && echo hello-from-the-vm > /srv/www/index.html\n"
    )
}

const HTTPD: &str = "echo starting httpd; exec busybox httpd -f -p 8080 -h /srv/www";

fn body(name: &str, start_cmd: &str, readiness: Value) -> Value {
    let mut body = json!({
        "name": name,
        "dockerfile": dockerfile(),
        "internet_access": false,
        "start_cmd": start_cmd,
    });
    if !readiness.is_null() {
        body["readiness"] = readiness;
    }
    body
}

fn log_text(status: &Value) -> String {
    status["entries"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            format!(
                "[{}] {}",
                e["phase"].as_str().unwrap_or("-"),
                e["message"].as_str().unwrap_or("")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn artifact(data: &Path, build: &str) -> PathBuf {
    data.join("templates").join(build)
}

fn template_json(data: &Path, build: &str) -> Value {
    serde_json::from_slice(&std::fs::read(artifact(data, build).join("template.json")).unwrap())
        .unwrap()
}

/// Ready, or an error in this phase whose message holds this text.
type Expected = Result<(), (&'static str, &'static str)>;

#[tokio::test(flavor = "multi_thread")]
async fn every_readiness_kind_passes_and_fails_in_the_build_vm() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start_with_env(
        data.path(),
        &[("NULLSPACE_MAX_ACTIVE_BUILDS_PER_OWNER", "16")],
    );
    let port_of_nothing = json!({"kind": "tcp", "port": 9, "retries": 3, "interval_ms": 200});
    let cases: Vec<(&str, String, Value, Expected)> = vec![
        (
            "tcp-ok",
            HTTPD.into(),
            json!({"kind": "tcp", "port": 8080}),
            Ok(()),
        ),
        (
            "http-ok",
            HTTPD.into(),
            json!({"kind": "http", "url": "http://127.0.0.1:8080/index.html"}),
            Ok(()),
        ),
        (
            "file-ok",
            "sleep 1; touch /run/ready; exec sleep 600".into(),
            json!({"kind": "file", "path": "/run/ready"}),
            Ok(()),
        ),
        (
            "process-ok",
            "exec sleep 600".into(),
            json!({"kind": "process", "name": "sleep"}),
            Ok(()),
        ),
        (
            "timeout-ok",
            "exec sleep 600".into(),
            json!({"kind": "timeout", "timeout_ms": 1500}),
            Ok(()),
        ),
        (
            "command-ok",
            HTTPD.into(),
            json!({"kind": "command", "command": "busybox wget -qO- http://127.0.0.1:8080/index.html"}),
            Ok(()),
        ),
        (
            "tcp-fails",
            "echo waiting on nothing; exec sleep 600".into(),
            port_of_nothing,
            Err(("readiness", "port 9")),
        ),
        (
            "http-fails",
            HTTPD.into(),
            json!({"kind": "http", "url": "http://127.0.0.1:8080/missing.html", "retries": 3, "interval_ms": 200}),
            Err(("readiness", "404")),
        ),
        (
            "file-fails",
            "exec sleep 600".into(),
            json!({"kind": "file", "path": "/run/never", "retries": 3, "interval_ms": 200}),
            Err(("readiness", "/run/never does not exist")),
        ),
        (
            "process-fails",
            "exec sleep 600".into(),
            json!({"kind": "process", "name": "no-such-daemon", "retries": 3, "interval_ms": 200}),
            Err(("readiness", "no-such-daemon")),
        ),
        (
            "timeout-fails",
            "echo about to fail; sleep 0.2; exit 4".into(),
            json!({"kind": "timeout", "timeout_ms": 5000}),
            Err(("startup", "status 4")),
        ),
        (
            "command-fails",
            "echo the server says hi; exec sleep 600".into(),
            json!({"kind": "command", "command": "echo probe-says-no; false", "retries": 3, "interval_ms": 200}),
            Err(("readiness", "probe-says-no")),
        ),
    ];
    let mut builds = Vec::new();
    for (name, start_cmd, readiness, _) in &cases {
        builds
            .push(start_build(&server.url, ALICE, body(name, start_cmd, readiness.clone())).await);
    }
    for ((name, _, _, expected), build) in cases.iter().zip(&builds) {
        let status = wait_status(&server.url, build, &["ready", "error", "cancelled"]).await;
        let log = log_text(&status);
        match expected {
            Ok(()) => {
                assert_eq!(
                    status["build"]["status"], "ready",
                    "{name}: {status}\n{log}"
                );
                let document = template_json(data.path(), build);
                let snapshot = &document["snapshot"];
                assert_eq!(snapshot["path"], "snapshot", "{name}");
                assert!(
                    matches!(snapshot["start"]["state"].as_str(), Some("running")),
                    "{name}: {snapshot}"
                );
                assert!(log.contains("[readiness] ready after"), "{name}:\n{log}");
                assert!(log.contains("[snapshot] snapshot taken"), "{name}:\n{log}");
            }
            Err((phase, detail)) => {
                assert_eq!(
                    status["build"]["status"], "error",
                    "{name}: {status}\n{log}"
                );
                assert_eq!(status["build"]["failure_phase"], *phase, "{name}: {status}");
                let error = status["build"]["error"].as_str().unwrap_or_default();
                assert!(error.contains(detail), "{name}: {error:?} lacks {detail:?}");
                assert!(
                    !artifact(data.path(), build).exists(),
                    "{name}: nothing is published"
                );
            }
        }
    }
    // A failure quotes the start command's last output.
    for (i, output) in [
        (6, "waiting on nothing"),
        (10, "about to fail"),
        (11, "the server says hi"),
    ] {
        let status = wait_status(&server.url, &builds[i], &["error"]).await;
        let error = status["build"]["error"].as_str().unwrap_or_default();
        assert!(
            error.contains(output),
            "{}: {error:?} lacks {output:?}",
            cases[i].0
        );
    }
    assert!(
        std::fs::read_dir(data.path().join("staging"))
            .unwrap()
            .next()
            .is_none(),
        "staging is empty"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_start_command_runs_with_the_runtime_defaults_and_a_restore_does_not_run_it_again() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path());
    // A rootfs-only base (no start command, so no VM), then a template on it with runtime
    // defaults: env, a user by name and a workdir the image lacks.
    let base = start_build(&server.url, ALICE,
        json!({"name": "busybox", "dockerfile": dockerfile(), "internet_access": false, "no_start_cmd": true}),
    )
    .await;
    let status = wait_status(&server.url, &base, &["ready", "error"]).await;
    assert_eq!(status["build"]["status"], "ready", "{status}");
    assert!(template_json(data.path(), &base)["snapshot"].is_null());
    assert!(log_text(&status).contains("rootfs-only template (snapshot: null)"));
    let mut request = body(
        "defaults",
        "cat /proc/net/route > /var/tmp/route; echo \"uid=$(id -u) gid=$(id -g) pwd=$(pwd) greeting=$GREETING home=$HOME\" | tee /var/tmp/seen; exec busybox httpd -f -p 8080 -h /srv/www",
        json!({"kind": "http", "url": "http://localhost:8080/index.html"}),
    );
    request.as_object_mut().unwrap().remove("dockerfile");
    request.as_object_mut().unwrap().remove("internet_access");
    request["base"] = json!({"kind": "template", "value": "busybox"});
    request["runtime_envs"] = json!({"GREETING": "hi there"});
    request["user"] = json!("daemon");
    request["workdir"] = json!("/srv/work");
    request["memory_mb"] = json!(384);
    let build = start_build(&server.url, ALICE, request).await;
    let status = wait_status(&server.url, &build, &["ready", "error"]).await;
    let log = log_text(&status);
    assert_eq!(status["build"]["status"], "ready", "{status}\n{log}");
    let expected = "uid=1 gid=1 pwd=/srv/work greeting=hi there home=/usr/sbin";
    assert!(
        log.contains(&format!("[startup] [stdout] {expected}")),
        "{log}"
    );
    for phase in ["vm_create", "startup", "readiness", "sync", "snapshot"] {
        assert!(
            log.contains(&format!("[{phase}]")),
            "no {phase} entry:\n{log}"
        );
    }

    // What the start command wrote is in the published rootfs (the disk at the snapshot), and
    // the filesystem is clean.
    let dir = artifact(data.path(), &build);
    let rootfs = dir.join("rootfs.ext4");
    let seen = std::process::Command::new("debugfs")
        .args(["-R", "cat /var/tmp/seen"])
        .arg(&rootfs)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&seen.stdout).trim(), expected);
    // With internet access (the devenv's operator allows build networks) the guest has eth0
    // on passt with a default route; nothing here sends traffic through it.
    let route = std::process::Command::new("debugfs")
        .args(["-R", "cat /var/tmp/route"])
        .arg(&rootfs)
        .output()
        .unwrap();
    let route = String::from_utf8_lossy(&route.stdout);
    assert!(
        route
            .lines()
            .any(|l| l.starts_with("eth0\t00000000\t0202000A")),
        "{route}"
    );
    let fsck = std::process::Command::new("e2fsck")
        .arg("-fn")
        .arg(&rootfs)
        .output()
        .unwrap();
    assert!(
        fsck.status.success(),
        "{}",
        String::from_utf8_lossy(&fsck.stdout)
    );

    let document = template_json(data.path(), &build);
    let snapshot = &document["snapshot"];
    assert_eq!(snapshot["machine"]["size"]["memory_mb"], 384);
    assert_eq!(snapshot["machine"]["vmm"], "qemu");
    let memory = snapshot["machine"]["memory_allocated_bytes"]
        .as_u64()
        .unwrap();
    assert!(
        memory > 0 && memory < 384 << 20,
        "RAM file is sparse: {memory}"
    );
    assert!(snapshot["machine"]["state_bytes"].as_u64().unwrap() < 8 << 20);

    // Restore it: the same start command process answers, it was not started again, and its
    // HTTP server answers inside the guest.
    let accel =
        nullspace_vm::AccelChoice::parse(&std::env::var("NULLSPACE_VM_ACCEL").unwrap_or_default())
            .unwrap();
    let qemu = nullspace_vm::Qemu::locate(None, accel).unwrap();
    let mut vm = qemu
        .restore(
            &dir.join("snapshot"),
            nullspace_vm::Disk {
                path: rootfs.clone(),
                overlay_dir: Some(std::env::temp_dir()),
            },
        )
        .await
        .unwrap();
    let before: nullspace_init::protocol::StartState =
        serde_json::from_value(snapshot["start"].clone()).unwrap();
    let after = vm.start_state().await.unwrap();
    assert_eq!(after, before, "same pid and start time: not run again");
    let (code, stdout) = vm
        .exec(
            "busybox wget -qO- http://127.0.0.1:8080/index.html",
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert_eq!((code, stdout.trim()), (Some(0), "hello-from-the-vm"));
    vm.kill().await;
    let unchanged = std::process::Command::new("e2fsck")
        .arg("-fn")
        .arg(&rootfs)
        .output()
        .unwrap();
    assert!(
        unchanged.status.success(),
        "the restore wrote nothing to the template's disk"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dockerfile_healthcheck_is_the_readiness_and_cancel_tears_the_vm_down() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path());
    let healthy = format!(
        "{}HEALTHCHECK --interval=1s --timeout=2s --retries=10 CMD test -f /run/healthy\n\
         CMD [\"sh\", \"-c\", \"sleep 1; touch /run/healthy; exec sleep 600\"]\n",
        dockerfile()
    );
    let build = start_build(
        &server.url,
        ALICE,
        json!({"name": "health", "dockerfile": healthy, "internet_access": false}),
    )
    .await;
    let never = body(
        "cancelled",
        "exec sleep 600",
        json!({"kind": "file", "path": "/run/never", "retries": 10000, "interval_ms": 500}),
    );
    let cancelled = start_build(&server.url, ALICE, never).await;

    let status = wait_status(&server.url, &build, &["ready", "error"]).await;
    let log = log_text(&status);
    assert_eq!(status["build"]["status"], "ready", "{status}\n{log}");
    let document = template_json(data.path(), &build);
    assert_eq!(document["runtime_defaults"]["readiness"]["kind"], "command");
    assert!(log.contains("readiness attempt"), "{log}");

    // Cancel while the probe waits; the VM (its QEMU names the build's staging dir) goes away.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, status) = call(
            reqwest::Method::GET,
            &format!("{}/v1/templates/builds/{cancelled}", server.url),
            ALICE,
            None,
        )
        .await;
        if log_text(&status).contains("[readiness]") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never reached readiness: {status}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        qemu_of(&cancelled),
        "the build VM runs while the probe waits"
    );
    let (code, _) = call(
        reqwest::Method::POST,
        &format!("{}/v1/templates/builds/{cancelled}/cancel", server.url),
        ALICE,
        None,
    )
    .await;
    assert!(code < 300, "cancel: {code}");
    wait_status(&server.url, &cancelled, &["cancelled"]).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while qemu_of(&cancelled) {
        assert!(
            Instant::now() < deadline,
            "QEMU of {cancelled} still runs after cancel"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!artifact(data.path(), &cancelled).exists());
}

/// Whether a QEMU process runs whose command line names `build` (its RAM file is in the
/// build's staging dir).
fn qemu_of(build: &str) -> bool {
    std::fs::read_dir("/proc").unwrap().flatten().any(|entry| {
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let text = String::from_utf8_lossy(&cmdline);
        text.starts_with("qemu-system") || text.contains("/qemu-system")
    } && {
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        String::from_utf8_lossy(&cmdline).contains(build)
    })
}
