//! A hostile tenant against a real `nullspace serve`: hostile registries and layers, requests
//! aimed at the host, build steps reaching for the host, another owner's layers, cancel loops,
//! a full disk and `kill -9` while publishing. Each case ends in a clear error, the server keeps
//! serving, and its memory stays bounded (peak RSS is printed).
//!
//! All traffic stays on loopback: the registry here is in-process, and the addresses the server
//! must refuse are refused before any packet leaves.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;
#[path = "adversarial/hostile_registry.rs"]
mod hostile_registry;

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use hostile_registry::{gzip, small_layer, tar_header, zeros, Behaviour, HostileRegistry};
use serde_json::{json, Value};

/// Operator settings of the servers here: the devenv's allowlists plus `hosts`, a short build
/// budget, a small per-owner quota, and no host network for build steps.
fn hostile_env(hosts: &[&str]) -> Vec<(&'static str, String)> {
    let mut env = allowing(hosts);
    env.push(("NULLSPACE_BUILD_TIMEOUT_SECS", "300".into()));
    env.push(("NULLSPACE_MAX_ACTIVE_BUILDS_PER_OWNER", "4".into()));
    env.push(("NULLSPACE_BUILD_HOST_NETWORK", String::new()));
    env
}

/// Runs a build to its end; returns (status, error message).
async fn outcome(url: &str, key: &str, body: Value) -> (String, String) {
    let id = start_build(url, key, body).await;
    let status = wait_status_as(url, key, &id, &["ready", "error", "cancelled"]).await;
    if std::env::var_os("NULLSPACE_TEST_VERBOSE").is_some() {
        for entry in status["entries"].as_array().into_iter().flatten() {
            eprintln!("  {id}: {}", entry["message"]);
        }
    }
    (
        status["build"]["status"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        status["build"]["error"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    )
}

/// The server's peak resident memory, from `/proc`.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn assert_failed_with(result: &(String, String), needle: &str) {
    assert_eq!(
        result.0, "error",
        "expected an error containing {needle:?}: {result:?}"
    );
    assert!(
        result.1.contains(needle),
        "expected {needle:?} in: {}",
        result.1
    );
}

/// A GCP service-account key (made by openssl) whose `token_uri` is `token_uri`.
fn gcp_key(token_uri: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let pem = dir.path().join("key.pem");
    let ok = Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&pem)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl is needed (apt-get install openssl)");
    assert!(ok.success());
    json!({
        "type": "service_account",
        "client_email": "hostile@example.iam.gserviceaccount.com",
        "private_key_id": "k1",
        "private_key": std::fs::read_to_string(&pem).unwrap(),
        "token_uri": token_uri,
    })
    .to_string()
}

#[tokio::test]
async fn hostile_registries_and_requests_end_in_clear_errors_and_the_server_keeps_serving() {
    let registry = Arc::new(HostileRegistry::default());
    let reg = registry.start().await;
    // Ports nobody allowlisted: the server must never connect to them.
    let (hole, forbidden) = blackhole();
    let (quota_hole, stalled) = blackhole();

    // Hostile layers.
    registry.put_image(
        "x/pax",
        Behaviour::Plain,
        vec![gzip(|out| {
            out.write_all(&tar_header("PaxHeaders/huge", b'x', 8 << 30))
                .unwrap();
            zeros(out, 4 << 20);
        })],
    );
    registry.put_image(
        "x/bomb",
        Behaviour::Plain,
        vec![gzip(|out| {
            out.write_all(&tar_header("hello", b'0', 0)).unwrap();
            zeros(out, 1 << 30);
        })],
    );
    registry.put_image(
        "x/million",
        Behaviour::Plain,
        vec![gzip(|out| {
            for i in 0..1_000_001u32 {
                out.write_all(&tar_header(&format!("f{i}"), b'0', 0))
                    .unwrap();
            }
            zeros(out, 1024);
        })],
    );
    registry.put_image(
        "x/redirect",
        Behaviour::RedirectBlobs(format!("http://{forbidden}/stolen")),
        vec![small_layer(b"x")],
    );
    registry.put_image(
        "x/realm",
        Behaviour::BearerRealm(format!("http://{forbidden}/token")),
        vec![small_layer(b"x")],
    );
    registry.put_image(
        "x/metadata",
        Behaviour::BearerRealm("http://169.254.169.254/computeMetadata/v1/token".into()),
        vec![small_layer(b"x")],
    );
    registry.put_image(
        "x/bigtoken",
        Behaviour::BearerRealm(format!("http://{reg}/big-token")),
        vec![small_layer(b"x")],
    );
    // Owner A's private image, and owner B's manifest that lists A's private layer.
    let private = registry.put_image(
        "alice/private",
        Behaviour::Basic("alice".into(), "alice-secret".into()),
        vec![small_layer(b"alice's private data")],
    );
    let private_layer = small_layer(b"alice's private data");
    registry.put_manifest(
        "bob/steal",
        Behaviour::Plain,
        br#"{"architecture":"amd64","os":"linux","config":{},"rootfs":{"type":"layers","diff_ids":[]}}"#,
        vec![json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": private[0],
            "size": private_layer.len(),
        })],
    );
    registry.put_image("ok/small", Behaviour::Plain, vec![small_layer(b"fine")]);

    let data = tempfile::tempdir().unwrap();
    let server = Server::start_with_env(data.path(), &hostile_env(&[&reg, &stalled]));
    let url = server.url.clone();
    let image = |repo: &str| json!({"name": repo.replace('/', "-"), "base_image": format!("{reg}/{repo}:latest"), "skip_cache": true});

    // Per-owner quota: four builds stall on a silent registry, the fifth is refused.
    let mut stalled_builds = Vec::new();
    for i in 0..4 {
        let body = json!({"name": format!("stall{i}"), "base_image": format!("{stalled}/a/b:1")});
        stalled_builds.push(start_build(&url, BOB, body).await);
    }
    let (code, refused) = submit_build(
        &url,
        BOB,
        json!({"name": "stall5", "base_image": format!("{stalled}/a/b:1")}),
    )
    .await;
    assert_eq!(code, 429, "{refused}");
    assert_eq!(refused["code"], "build_quota_exceeded", "{refused}");
    for id in &stalled_builds {
        let (code, body) = call(
            reqwest::Method::POST,
            &format!("{url}/v1/templates/builds/{id}/cancel"),
            BOB,
            Some(json!({})),
        )
        .await;
        assert_eq!(code, 200, "{body}");
    }

    let started = Instant::now();
    assert_failed_with(
        &outcome(&url, ALICE, image("x/pax")).await,
        "over the limit",
    );
    assert_failed_with(
        &outcome(&url, ALICE, image("x/bomb")).await,
        "follow the end of the archive",
    );
    assert_failed_with(
        &outcome(&url, ALICE, image("x/million")).await,
        "more than 1000000 entries",
    );
    assert_failed_with(
        &outcome(&url, ALICE, image("x/redirect")).await,
        "not allowed",
    );
    assert_failed_with(&outcome(&url, ALICE, image("x/realm")).await, "not allowed");
    assert_failed_with(
        &outcome(&url, ALICE, image("x/metadata")).await,
        "link-local",
    );
    assert_failed_with(
        &outcome(&url, ALICE, image("x/bigtoken")).await,
        "larger than the limit",
    );
    // Images named by loopback address or localhost name that the operator did not allowlist.
    for host in [
        forbidden.clone(),
        "localhost:2375".into(),
        "[::1]:2375".into(),
    ] {
        let body = json!({"name": "loop", "base_image": format!("{host}/a/b:1")});
        assert_failed_with(&outcome(&url, ALICE, body).await, "not allowed");
    }
    // A GCP key whose token_uri points at the host.
    let gcp = json!({
        "name": "gcp",
        "base_image": format!("{reg}/ok/small:latest"),
        "base_image_auth": {"kind": "gcp", "service_account_json": gcp_key(&format!("http://{forbidden}/token"))},
    });
    assert_failed_with(&outcome(&url, ALICE, gcp).await, "not allowed");
    eprintln!("hostile cases took {:?}", started.elapsed());

    // Owner B cannot obtain owner A's private layer by listing its digest.
    let mut alice = image("alice/private");
    alice["base_image_auth"] = json!({"username": "alice", "password": "alice-secret"});
    alice["skip_cache"] = json!(false);
    let done = outcome(&url, ALICE, alice).await;
    assert_eq!(done.0, "ready", "{done:?}");
    let mut steal = image("bob/steal");
    steal["skip_cache"] = json!(false);
    let stolen = outcome(&url, BOB, steal).await;
    assert_eq!(stolen.0, "error", "bob got alice's layer: {stolen:?}");
    assert!(
        stolen.1.contains(&private[0]) || stolen.1.contains("not found"),
        "{stolen:?}"
    );

    // The server still serves everyone.
    let fine = outcome(&url, BOB, image("ok/small")).await;
    assert_eq!(fine.0, "ready", "{fine:?}");
    let (code, _) = call(reqwest::Method::GET, &format!("{url}/healthz"), BOB, None).await;
    assert_eq!(code, 200);
    let peak = peak_rss_kib(server.child.id());
    eprintln!(
        "peak RSS of the server after the hostile cases: {} MiB",
        peak / 1024
    );
    assert!(peak < 1536 * 1024, "peak RSS {peak} KiB");
    drop((hole, quota_hole));
}

#[tokio::test]
async fn a_registry_that_drips_is_cut_off_by_the_build_budget() {
    let registry = Arc::new(HostileRegistry::default());
    let reg = registry.start().await;
    registry.put_image("x/drip", Behaviour::Drip, vec![small_layer(&[7u8; 4096])]);
    let data = tempfile::tempdir().unwrap();
    let mut env = hostile_env(&[&reg]);
    env.push(("NULLSPACE_BUILD_TIMEOUT_SECS", "5".into()));
    let server = Server::start_with_env(data.path(), &env);
    let body = json!({"name": "drip", "base_image": format!("{reg}/x/drip:latest")});
    let started = Instant::now();
    assert_failed_with(&outcome(&server.url, ALICE, body).await, "ran out of time");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn build_steps_reach_neither_the_host_network_nor_the_client_environment() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start_with_env(data.path(), &hostile_env(&[]));
    let url = server.url.clone();
    let port = url
        .rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches('/')
        .to_owned();
    let dockerfile = format!(
        "FROM {}/library/debian:bookworm\n\
         RUN ! bash -c 'exec 3<>/dev/tcp/127.0.0.1/{port}' && ! test -e /var/run/docker.sock && echo isolated > /isolated\n",
        registry()
    );
    // The host network is refused while the operator has not allowed it (internet_access
    // defaults to true).
    let (code, refused) = submit_build(
        &url,
        ALICE,
        json!({"name": "net", "dockerfile": dockerfile}),
    )
    .await;
    assert_eq!(code, 400, "{refused}");
    assert!(refused.to_string().contains("internet_access"), "{refused}");
    // BUILDKIT_* build args would steer the frontend around the Dockerfile checks.
    let (code, refused) = submit_build(
        &url,
        ALICE,
        json!({"name": "net", "dockerfile": dockerfile, "internet_access": false,
               "build_envs": {"BUILDKIT_SYNTAX": "docker/dockerfile:1"}}),
    )
    .await;
    assert_eq!(code, 400, "{refused}");
    // Cache mounts are shared by every build of the daemon: refused.
    let (code, refused) = submit_build(
        &url,
        ALICE,
        json!({"name": "net", "internet_access": false,
               "dockerfile": format!("FROM {}/library/debian:bookworm\nRUN --mount=type=cache,target=/c true\n", registry())}),
    )
    .await;
    assert_eq!(code, 400, "{refused}");
    assert!(refused.to_string().contains("cache mounts"), "{refused}");
    // Offline: the steps cannot reach the API or the Docker socket, and the build works.
    let result = outcome(
        &url,
        ALICE,
        json!({"name": "net", "dockerfile": dockerfile, "internet_access": false}),
    )
    .await;
    assert_eq!(result.0, "ready", "{result:?}");
    // Declarative steps with build env names that would hijack the docker client if they
    // became its environment: they reach the steps as build args, and the client runs as ever.
    let result = outcome(
        &url,
        ALICE,
        json!({"name": "envs", "base_image": format!("{}/library/debian:bookworm", registry()),
               "internet_access": false,
               "build_envs": {"LD_PRELOAD": "/tmp/evil.so", "DOCKER_HOST": "tcp://127.0.0.1:1",
                              "DOCKER_CONFIG": "/tmp/stolen", "BUILDX_CONFIG": "/tmp/x"},
               "steps": [{"type": "run_cmd", "cmd": format!("test \"$DOCKER_HOST\" = tcp://127.0.0.1:1 && ! bash -c 'exec 3<>/dev/tcp/127.0.0.1/{port}'")}]}),
    )
    .await;
    assert_eq!(result.0, "ready", "{result:?}");
}

/// Threads of the server process named `name` (the rootfs writer's decoder thread is
/// `layer-decoder`).
fn threads_named(pid: u32, name: &str) -> usize {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == name))
        .count()
}

#[tokio::test]
async fn a_submit_and_cancel_loop_never_runs_more_writers_than_workers() {
    let data = tempfile::tempdir().unwrap();
    let mut env = hostile_env(&[]);
    env.push(("NULLSPACE_MAX_ACTIVE_BUILDS_PER_OWNER", "100".into()));
    let server = Server::start_with_env(data.path(), &env);
    let url = server.url.clone();
    let pid = server.child.id();
    let most = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (most, stop) = (most.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                most.fetch_max(threads_named(pid, "layer-decoder"), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let body = json!({"name": "churn", "base_image": format!("{}/library/debian:bookworm", registry()), "skip_cache": true});
    let mut writers_seen = false;
    for round in 0..12u64 {
        let id = start_build(&url, ALICE, body.clone()).await;
        // Cancel at different points, most of them while the writer runs.
        let deadline = Instant::now() + Duration::from_secs(60);
        while threads_named(pid, "layer-decoder") == 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        writers_seen |= threads_named(pid, "layer-decoder") > 0;
        tokio::time::sleep(Duration::from_millis(50 * (round % 4))).await;
        let (code, cancelled) = call(
            reqwest::Method::POST,
            &format!("{url}/v1/templates/builds/{id}/cancel"),
            ALICE,
            Some(json!({})),
        )
        .await;
        assert_eq!(code, 200, "{cancelled}");
    }
    // Writers of cancelled builds stop at their next read.
    let deadline = Instant::now() + Duration::from_secs(10);
    while threads_named(pid, "layer-decoder") > 0 {
        if Instant::now() >= deadline {
            let tasks: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|t| {
                    let comm = std::fs::read_to_string(t.path().join("comm")).ok()?;
                    let stack = std::fs::read_to_string(t.path().join("wchan")).unwrap_or_default();
                    Some(format!("{}:{}", comm.trim(), stack))
                })
                .collect();
            panic!("writers outlived their cancelled builds: {tasks:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    assert!(writers_seen, "no writer ever ran: the loop checked nothing");
    let most = most.load(Ordering::Relaxed);
    eprintln!("most rootfs writers at once: {most} (workers: 2)");
    assert!(most <= 2, "{most} writers ran at once with 2 workers");
}

/// A tmpfs of `size` at `dir`, unmounted on drop.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(dir: &Path, size: &str) -> SmallDisk {
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .expect("mount");
        assert!(ok.success(), "mounting a tmpfs needs root (CAP_SYS_ADMIN)");
        SmallDisk(dir.to_path_buf())
    }

    fn resize(&self, size: &str) {
        let ok = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .expect("mount");
        assert!(ok.success());
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test]
async fn a_full_disk_fails_the_build_cleanly_and_the_next_build_works() {
    let mount_point = tempfile::tempdir().unwrap();
    let disk = SmallDisk::mount(mount_point.path(), "96m");
    let data = mount_point.path().join("data");
    let server = Server::start_with_env(&data, &hostile_env(&[]));
    let url = server.url.clone();
    let body =
        json!({"name": "full", "base_image": format!("{}/library/debian:bookworm", registry())});
    let failed = outcome(&url, ALICE, body.clone()).await;
    assert_eq!(failed.0, "error", "{failed:?}");
    assert!(
        failed.1.contains("No space left") || failed.1.contains("space"),
        "{failed:?}"
    );
    // The operator's paths stay the operator's.
    assert!(!failed.1.contains(&*data.to_string_lossy()), "{failed:?}");
    // Nothing half-published, nothing left running.
    let published: Vec<_> = std::fs::read_dir(data.join("templates"))
        .map(|d| d.flatten().collect())
        .unwrap_or_default();
    assert!(published.is_empty(), "{published:?}");
    let staging: Vec<_> = std::fs::read_dir(data.join("staging"))
        .map(|d| d.flatten().collect())
        .unwrap_or_default();
    assert!(staging.is_empty(), "{staging:?}");
    disk.resize("1g");
    let retried = outcome(&url, ALICE, body).await;
    assert_eq!(retried.0, "ready", "{retried:?}");
    drop(server);
}

/// Every tag points at a build the API calls ready, and every published artifact belongs to
/// one.
fn assert_tags_point_at_ready_builds(data: &Path) {
    let rows = store_rows(
        data,
        "SELECT g.tag, g.build_id, a.status FROM tags g LEFT JOIN api_builds a ON a.id = g.build_id",
        &[],
    );
    for row in rows {
        assert_eq!(
            row[2].as_deref(),
            Some("ready"),
            "tag {:?} points at {:?}",
            row[0],
            row[1]
        );
    }
    for dir in std::fs::read_dir(data.join("templates"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let id = dir.file_name().to_string_lossy().into_owned();
        let status = store_rows(data, "SELECT status FROM api_builds WHERE id = $1", &[&id])
            .into_iter()
            .next()
            .and_then(|row| row[0].clone());
        assert_eq!(
            status.as_deref(),
            Some("ready"),
            "artifact {id} of an unfinished build"
        );
    }
}

#[tokio::test]
async fn killing_the_server_while_it_publishes_never_leaves_a_tag_on_an_unfinished_build() {
    let data = tempfile::tempdir().unwrap();
    let image = format!("{}/library/debian:bookworm", registry());
    // Warm the blob store and rootfs cache: publication is then most of each build.
    {
        let server = Server::start_with_env(data.path(), &hostile_env(&[]));
        let warm = outcome(
            &server.url,
            ALICE,
            json!({"name": "warm", "base_image": image}),
        )
        .await;
        assert_eq!(warm.0, "ready", "{warm:?}");
    }
    for step in 0..14u64 {
        let mut server = Server::start_with_env(data.path(), &hostile_env(&[]));
        let id = start_build(
            &server.url,
            ALICE,
            json!({"name": "crashy", "base_image": image, "tags": ["default", format!("t{step}")]}),
        )
        .await;
        // Kill at a different moment each time, from the start to the end of publishing.
        tokio::time::sleep(Duration::from_millis(3 * step)).await;
        let _ = server.child.kill();
        let _ = server.child.wait();
        let server = Server::start_with_env(data.path(), &hostile_env(&[]));
        let ended = wait_status(&server.url, &id, &["ready", "error", "cancelled"]).await;
        assert_tags_point_at_ready_builds(data.path());
        eprintln!("kill after {} ms: {}", 3 * step, ended["build"]["status"]);
    }
}

#[tokio::test]
async fn garbage_collection_keeps_what_templates_need_and_removes_the_rest() {
    let registry = Arc::new(HostileRegistry::default());
    let reg = registry.start().await;
    let kept = registry.put_image("ok/keep", Behaviour::Plain, vec![small_layer(b"keep me")]);
    let dropped = registry.put_image(
        "x/pax",
        Behaviour::Plain,
        vec![gzip(|out| {
            out.write_all(&tar_header("PaxHeaders/huge", b'x', 8 << 30))
                .unwrap();
            zeros(out, 1 << 20);
        })],
    );
    let data = tempfile::tempdir().unwrap();
    let mut env = hostile_env(&[&reg]);
    for (name, value) in [
        ("NULLSPACE_GC_MAX_LAYER_BYTES", "1"),
        ("NULLSPACE_GC_MAX_CONTEXT_BYTES", "1"),
        ("NULLSPACE_GC_MIN_AGE_SECS", "1"),
        ("NULLSPACE_GC_INTERVAL_SECS", "1"),
    ] {
        env.push((name, value.into()));
    }
    let server = Server::start_with_env(data.path(), &env);
    let url = server.url.clone();
    let keep = json!({"name": "keep", "base_image": format!("{reg}/ok/keep:latest")});
    assert_eq!(outcome(&url, ALICE, keep.clone()).await.0, "ready");
    assert_eq!(
        outcome(
            &url,
            ALICE,
            json!({"name": "pax", "base_image": format!("{reg}/x/pax:latest")})
        )
        .await
        .0,
        "error"
    );
    // A context blob that no build uses yet.
    let content = b"context file".to_vec();
    let digest = hostile_registry::digest(&content);
    let uploaded = client()
        .put(format!("{url}/v1/templates/build-context/blobs/{digest}"))
        .bearer_auth(ALICE)
        .body(content.clone())
        .send()
        .await
        .unwrap();
    assert!(uploaded.status().is_success(), "{}", uploaded.status());

    let blob = |d: &str| {
        data.path()
            .join("blobs/sha256")
            .join(d.trim_start_matches("sha256:"))
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while blob(&dropped[0]).exists() {
        assert!(
            Instant::now() < deadline,
            "the unreferenced layer was never collected"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        blob(&kept[0]).exists(),
        "the template's own layer was collected"
    );
    let head = |d: String| {
        let url = url.clone();
        async move {
            client()
                .head(format!("{url}/v1/templates/build-context/blobs/{d}"))
                .bearer_auth(ALICE)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    while head(digest.clone()).await != 404 {
        assert!(
            Instant::now() < deadline,
            "the unused context blob was never collected"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A build naming the collected blob fails with a clear code; the template still rebuilds.
    let (code, body) = submit_build(
        &url,
        ALICE,
        json!({"name": "ctx", "internet_access": false,
               "dockerfile": format!("FROM {reg}/ok/keep:latest\nCOPY f /f\n"),
               "build_context": {"entries": [{"type": "file", "path": "f", "digest": digest, "size": content.len(), "mode": 420}]}}),
    )
    .await;
    assert!(
        body.to_string().contains("file_upload") || body.to_string().contains("missing"),
        "{code}: {body}"
    );
    assert_eq!(outcome(&url, ALICE, keep).await.0, "ready");
}

#[tokio::test]
async fn each_owner_has_a_quota_of_stored_context_files() {
    let data = tempfile::tempdir().unwrap();
    let mut env = hostile_env(&[]);
    env.push(("NULLSPACE_MAX_CONTEXT_BYTES_PER_OWNER", "1000".into()));
    let server = Server::start_with_env(data.path(), &env);
    let upload = |key: &'static str, fill: u8| {
        let url = server.url.clone();
        async move {
            let content = vec![fill; 600];
            let digest = hostile_registry::digest(&content);
            let response = client()
                .put(format!("{url}/v1/templates/build-context/blobs/{digest}"))
                .bearer_auth(key)
                .body(content)
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            (
                status,
                response.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    assert_eq!(upload(ALICE, b'a').await.0, 201);
    let (status, refused) = upload(ALICE, b'b').await;
    assert_eq!(status, 429, "{refused}");
    assert_eq!(refused["code"], "context_quota_exceeded", "{refused}");
    // Another owner's quota is their own.
    assert_eq!(upload(BOB, b'b').await.0, 201);
}
