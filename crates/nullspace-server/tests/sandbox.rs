//! Sandboxes from template snapshots, end to end: the real server, BuildKit, QEMU (TCG here)
//! and the Debian kernel of the test environment. The template's start command serves HTTP
//! with busybox; every request goes to the guest's own loopback.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{
    allowing, call, client, registry, start_build, wait_status, wait_status_as, Server, ALICE, BOB,
};
use reqwest::Method;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

fn localapt() -> String {
    std::env::var("NULLSPACE_FIXTURE_LOCALAPT_REF")
        .unwrap_or_else(|_| format!("{}/nullspace/fixture-bookworm-localapt:latest", registry()))
}

/// The same busybox step as the VM tests (BuildKit caches it across them).
fn dockerfile() -> String {
    format!(
        "FROM {}\n\
         RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends busybox \
         && mkdir -p /srv/www && echo hello-from-the-vm > /srv/www/index.html\n",
        localapt()
    )
}

fn digest(path: &Path) -> String {
    let mut hasher = Sha256::new();
    let mut file = std::fs::File::open(path).unwrap();
    std::io::copy(&mut file, &mut hasher).unwrap();
    hex::encode(hasher.finalize())
}

async fn create(url: &str, key: &str, body: Value) -> (u16, Value) {
    call(
        Method::POST,
        &format!("{url}/v1/sandboxes"),
        key,
        Some(body),
    )
    .await
}

async fn run(url: &str, key: &str, sandbox: &str, body: Value) -> (u16, Value) {
    call(
        Method::POST,
        &format!("{url}/v1/sandboxes/{sandbox}/commands"),
        key,
        Some(body),
    )
    .await
}

/// Runs `cmd` and returns its stdout, asserting exit 0.
async fn sh(url: &str, sandbox: &str, cmd: &str) -> String {
    let (status, body) = run(url, ALICE, sandbox, json!({"cmd": cmd})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["exit_code"], 0, "{cmd}: {body}");
    body["stdout"].as_str().unwrap().to_string()
}

/// Field 22 of `/proc/PID/stat` (start time in ticks since boot).
fn start_ticks(stat: &str) -> u64 {
    let after = &stat[stat.rfind(')').unwrap() + 1..];
    after.split_whitespace().nth(19).unwrap().parse().unwrap()
}

async fn wait_ended(url: &str, sandbox: &str, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let (status, body) = call(
            Method::GET,
            &format!("{url}/v1/sandboxes/{sandbox}"),
            ALICE,
            None,
        )
        .await;
        assert_eq!(status, 200, "{body}");
        if body["state"] == "ended" {
            return body;
        }
        assert!(Instant::now() < deadline, "{sandbox} still running: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sandboxes_restore_the_template_snapshot_with_their_own_disk_env_and_files() {
    let data = tempfile::tempdir().unwrap();
    let mut server = Server::start(data.path());
    let url = server.url.clone();
    let web_dockerfile = format!(
        "{}RUN mkdir -p /srv/work && chown daemon /srv/work\n\
         ENV GREETING=from-the-template\nUSER daemon\nWORKDIR /srv/work\n",
        dockerfile()
    );
    let build = start_build(
        &url,
        ALICE,
        json!({
            "name": "web",
            "dockerfile": web_dockerfile,
            "internet_access": false,
            "start_cmd": "exec busybox httpd -f -p 8080 -h /srv/www",
            "readiness": {"kind": "tcp", "port": 8080},
        }),
    )
    .await;
    let status = wait_status(&url, &build, &["ready", "error"]).await;
    assert_eq!(status["build"]["status"], "ready", "{status}");
    let artifact = data.path().join("templates").join(&build);
    let document: Value =
        serde_json::from_slice(&std::fs::read(artifact.join("template.json")).unwrap()).unwrap();
    let pid = document["snapshot"]["start"]["pid"].as_u64().unwrap();
    let ticks = document["snapshot"]["start"]["start_ticks"]
        .as_u64()
        .unwrap();
    let rootfs_before = digest(&artifact.join("rootfs.ext4"));
    let memory_before = digest(&artifact.join("snapshot/memory"));

    // Created from the snapshot: the server already runs, as the same process.
    let (code, a) = create(
        &url,
        ALICE,
        json!({"template": "web", "envs": {"SANDBOX_ONLY": "a-value"}, "timeout": 300}),
    )
    .await;
    assert_eq!(code, 201, "{a}");
    assert_eq!(a["started_from"], "snapshot", "{a}");
    assert_eq!(a["state"], "running");
    assert_eq!(a["build_id"], build.as_str());
    let a = a["sandbox_id"].as_str().unwrap().to_string();
    assert!(a.starts_with("sb_"));
    let page = sh(
        &url,
        &a,
        "busybox wget -qO- http://127.0.0.1:8080/index.html",
    )
    .await;
    assert_eq!(page.trim(), "hello-from-the-vm");
    let stat = sh(&url, &a, &format!("cat /proc/{pid}/stat")).await;
    assert_eq!(
        start_ticks(&stat),
        ticks,
        "the start command was not re-run: {stat}"
    );

    // Env: the template's and the sandbox's for commands; the start command never saw the
    // sandbox's.
    let env = sh(&url, &a, "echo \"$GREETING $SANDBOX_ONLY\"").await;
    assert_eq!(env.trim(), "from-the-template a-value");
    let (_, per_command) = run(
        &url,
        ALICE,
        &a,
        json!({"cmd": "echo $SANDBOX_ONLY", "envs": {"SANDBOX_ONLY": "overridden"}}),
    )
    .await;
    assert_eq!(per_command["stdout"].as_str().unwrap().trim(), "overridden");
    let start_env = sh(&url, &a, &format!("tr '\\0' '\\n' < /proc/{pid}/environ")).await;
    assert!(
        start_env.contains("GREETING=from-the-template"),
        "{start_env}"
    );
    assert!(!start_env.contains("SANDBOX_ONLY"), "{start_env}");

    // User and cwd: the template's by default, the request's when given; argv runs directly.
    assert_eq!(sh(&url, &a, "id -un; pwd").await, "daemon\n/srv/work\n");
    let (_, as_root) = run(
        &url,
        ALICE,
        &a,
        json!({"argv": ["id", "-u"], "user": "root", "cwd": "/tmp"}),
    )
    .await;
    assert_eq!(as_root["stdout"], "0\n", "{as_root}");
    let (_, failing) = run(&url, ALICE, &a, json!({"cmd": "echo oops >&2; exit 3"})).await;
    assert_eq!(failing["exit_code"], 3);
    assert_eq!(failing["stderr"], "oops\n");
    assert_eq!(failing["status"], "exited");
    let (_, no_cwd) = run(&url, ALICE, &a, json!({"cmd": "true", "cwd": "/nowhere"})).await;
    assert_eq!(no_cwd["status"], "failed", "{no_cwd}");
    assert!(
        no_cwd["error"].as_str().unwrap().contains("/nowhere"),
        "{no_cwd}"
    );

    // Files: bytes round trip, owned by the sandbox's user; clear errors.
    let bytes: Vec<u8> = (0..=255u8).cycle().take(3_000_000).collect();
    let files = format!("{url}/v1/sandboxes/{a}/files");
    let written = client()
        .put(format!("{files}?path=data/blob.bin"))
        .bearer_auth(ALICE)
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(written.status(), 200);
    let written: Value = written.json().await.unwrap();
    assert_eq!(written["size"], 3_000_000);
    let read = client()
        .get(format!("{files}?path=/srv/work/data/blob.bin"))
        .bearer_auth(ALICE)
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 200);
    assert_eq!(read.bytes().await.unwrap().to_vec(), bytes);
    let (code, listing) = call(
        Method::GET,
        &format!("{files}/list?path=/srv/work/data"),
        ALICE,
        None,
    )
    .await;
    assert_eq!(code, 200, "{listing}");
    let entry = &listing["entries"][0];
    assert_eq!(entry["name"], "blob.bin");
    assert_eq!(entry["type"], "file");
    assert_eq!(entry["uid"], 1, "daemon owns it: {entry}");
    let (code, missing) = call(Method::GET, &format!("{files}?path=/no/such"), ALICE, None).await;
    assert_eq!(
        (code, missing["code"].as_str()),
        (404, Some("file_not_found"))
    );
    let denied = client()
        .put(format!("{files}?path=/etc/owned-by-root"))
        .bearer_auth(ALICE)
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), 403, "daemon cannot write /etc");

    // A second sandbox of the template: its own disk.
    let (code, b) = create(&url, ALICE, json!({"template": "web:default"})).await;
    assert_eq!(code, 201, "{b}");
    let b = b["sandbox_id"].as_str().unwrap().to_string();
    let (_, unseen) = run(&url, ALICE, &b, json!({"cmd": "ls /srv/work/data"})).await;
    assert_ne!(unseen["exit_code"], 0, "{unseen}");
    sh(&url, &b, "echo b > /srv/work/b-only").await;
    let (_, unseen) = run(&url, ALICE, &a, json!({"cmd": "cat /srv/work/b-only"})).await;
    assert_ne!(unseen["exit_code"], 0, "{unseen}");
    assert_eq!(
        sh(&url, &b, "printenv SANDBOX_ONLY || echo unset").await,
        "unset\n"
    );
    // Restored from one snapshot, yet their kernel RNGs were reseeded apart.
    let random = "od -An -tx1 -N16 /dev/urandom";
    assert_ne!(sh(&url, &a, random).await, sh(&url, &b, random).await);

    // Streaming, background, kill and timeouts of commands.
    let streamed = client()
        .post(format!("{url}/v1/sandboxes/{a}/commands"))
        .bearer_auth(ALICE)
        .header("accept", "text/event-stream")
        .json(&json!({"cmd": "for i in 1 2 3; do echo line-$i; sleep 0.2; done"}))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let stdout_events = streamed.matches("event: stdout").count();
    assert!(
        stdout_events >= 2,
        "output came as it was written: {streamed}"
    );
    assert!(streamed.contains("event: end"), "{streamed}");
    assert!(streamed.contains("\"exit_code\":0"), "{streamed}");
    let (code, background) = run(
        &url,
        ALICE,
        &a,
        json!({"cmd": "echo started; sleep 60", "background": true}),
    )
    .await;
    assert_eq!(code, 202, "{background}");
    assert_eq!(background["status"], "running");
    let command = background["command_id"].as_u64().unwrap();
    let (code, killed) = call(
        Method::DELETE,
        &format!("{url}/v1/sandboxes/{a}/commands/{command}"),
        ALICE,
        None,
    )
    .await;
    assert_eq!(code, 200, "{killed}");
    if killed["status"] != "killed" {
        let (_, ps) = run(
            &url,
            ALICE,
            &a,
            json!({"cmd": "busybox ps", "user": "root"}),
        )
        .await;
        panic!("{killed}\n{}", ps["stdout"].as_str().unwrap_or_default());
    }
    let (_, slow) = run(&url, ALICE, &a, json!({"cmd": "sleep 30", "timeout": 1})).await;
    assert_eq!(slow["status"], "timed_out", "{slow}");

    // Another owner sees none of it.
    for (method, path) in [
        (Method::GET, format!("/v1/sandboxes/{a}")),
        (Method::DELETE, format!("/v1/sandboxes/{a}")),
        (
            Method::GET,
            format!("/v1/sandboxes/{a}/files?path=/etc/hostname"),
        ),
    ] {
        let (code, body) = call(method, &format!("{url}{path}"), BOB, None).await;
        assert_eq!(code, 404, "{path}: {body}");
        assert_eq!(body["code"], "sandbox_not_found");
    }
    let (code, body) = run(&url, BOB, &a, json!({"cmd": "true"})).await;
    assert_eq!(
        (code, body["code"].as_str()),
        (404, Some("sandbox_not_found"))
    );
    let (_, bobs) = call(Method::GET, &format!("{url}/v1/sandboxes"), BOB, None).await;
    assert_eq!(bobs["sandboxes"], json!([]));
    let (_, alices) = call(
        Method::GET,
        &format!("{url}/v1/sandboxes?state=running"),
        ALICE,
        None,
    )
    .await;
    assert_eq!(alices["sandboxes"].as_array().unwrap().len(), 2, "{alices}");

    // Timeouts kill; a guest that powers off is reported; kill ends one at once.
    let (_, short) = create(&url, ALICE, json!({"template": build, "timeout": 1})).await;
    let short = short["sandbox_id"].as_str().unwrap().to_string();
    let ended = wait_ended(&url, &short, Duration::from_secs(30)).await;
    assert_eq!(ended["end_reason"], "timed_out", "{ended}");
    let (_, body) = run(
        &url,
        ALICE,
        &b,
        json!({"cmd": "echo o > /proc/sysrq-trigger", "user": "root", "background": true}),
    )
    .await;
    assert_eq!(body["status"], "running", "{body}");
    let ended = wait_ended(&url, &b, Duration::from_secs(30)).await;
    assert_eq!(ended["end_reason"], "vm_exited", "{ended}");
    let (code, killed) = call(
        Method::DELETE,
        &format!("{url}/v1/sandboxes/{a}"),
        ALICE,
        None,
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(
        (killed["state"].as_str(), killed["end_reason"].as_str()),
        (Some("ended"), Some("killed"))
    );
    let (code, body) = run(&url, ALICE, &a, json!({"cmd": "true"})).await;
    assert_eq!(code, 404, "{body}");

    // A rootfs-only template (no snapshot) cold-boots, and says so.
    let plain = start_build(
        &url,
        ALICE,
        json!({"name": "plain", "dockerfile": dockerfile(), "internet_access": false, "no_start_cmd": true}),
    )
    .await;
    let status = wait_status(&url, &plain, &["ready", "error"]).await;
    assert_eq!(status["build"]["status"], "ready", "{status}");
    let (code, cold) = create(&url, ALICE, json!({"template": "plain"})).await;
    assert_eq!(code, 201, "{cold}");
    assert_eq!(cold["started_from"], "cold_boot", "{cold}");
    let cold = cold["sandbox_id"].as_str().unwrap().to_string();
    assert_eq!(
        sh(&url, &cold, "cat /srv/www/index.html").await,
        "hello-from-the-vm\n"
    );
    call(
        Method::DELETE,
        &format!("{url}/v1/sandboxes/{cold}"),
        ALICE,
        None,
    )
    .await;

    // A restarted server records the sandboxes it had as ended.
    let (_, survivor) = create(&url, ALICE, json!({"template": "web"})).await;
    let survivor = survivor["sandbox_id"].as_str().unwrap().to_string();
    server.kill();
    let server = Server::start(data.path());
    let (_, after) = call(
        Method::GET,
        &format!("{}/v1/sandboxes/{survivor}", server.url),
        ALICE,
        None,
    )
    .await;
    assert_eq!(after["state"], "ended", "{after}");
    assert_eq!(after["end_reason"], "server_restarted", "{after}");

    // The template's files are as they were.
    assert_eq!(digest(&artifact.join("rootfs.ext4")), rootfs_before);
    assert_eq!(digest(&artifact.join("snapshot/memory")), memory_before);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_builtin_base_template_is_built_on_first_use_and_shared() {
    let data = tempfile::tempdir().unwrap();
    let registry = registry();
    let mut envs = allowing(&[registry.as_str()]);
    envs.push(("NULLSPACE_BASE_IMAGE", localapt()));
    envs.push(("NULLSPACE_SANDBOX_MAX_PER_OWNER", "1".into()));
    let server = Server::start_with_env(data.path(), &envs);
    // First use through `from_template("base")`: an owner without a `base` builds on the
    // builtin one, which is built first.
    let on_base = start_build(
        &server.url,
        BOB,
        json!({"name": "on-base", "base": {"kind": "template", "value": "base"}, "no_start_cmd": true}),
    )
    .await;
    let status = wait_status_as(&server.url, BOB, &on_base, &["ready", "error"]).await;
    assert_eq!(status["build"]["status"], "ready", "{status}");
    let (code, first) = create(&server.url, ALICE, json!({})).await;
    assert_eq!(code, 201, "{first}");
    assert_eq!(first["template"], "base");
    assert_eq!(first["started_from"], "snapshot", "{first}");
    let sandbox = first["sandbox_id"].as_str().unwrap();
    let release = sh(&server.url, sandbox, "cat /etc/debian_version").await;
    assert!(release.starts_with("12"), "{release}");
    // The per-owner count limit.
    let (code, refused) = create(&server.url, ALICE, json!({})).await;
    assert_eq!(
        (code, refused["code"].as_str()),
        (429, Some("sandbox_quota_exceeded")),
        "{refused}"
    );
    // Another owner gets the same build, without building it again.
    let (code, second) = create(&server.url, BOB, json!({"template": "base"})).await;
    assert_eq!(code, 201, "{second}");
    assert_eq!(second["build_id"], first["build_id"]);
    // It is nobody's template to list.
    let (_, listed) = call(
        Method::GET,
        &format!("{}/v1/templates", server.url),
        ALICE,
        None,
    )
    .await;
    assert_eq!(listed["templates"], json!([]), "{listed}");
}
