//! Many hosts: one API process and two worker processes with separate data dirs (as if on two
//! hosts), sharing PostgreSQL (the devenv's) and S3-compatible object storage (moto's server, on
//! loopback). Ten builds spread over both workers; every published artifact downloads from
//! object storage with its digests checked and equals the worker's copy; cancel reaches the
//! worker that runs the build; SIGTERM hands a running build back to the queue; `kill -9` of a
//! worker mid-build leaves a build that ends in a definite state with the right log, which a
//! client following through the API sees whole; a template built by one worker is the
//! `from_template` base of a build on the other.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

const BUCKET: &str = "nullspace-artifacts";

/// moto's S3 server on a free loopback port, with the bucket made.
struct Moto {
    child: Child,
    endpoint: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_moto() -> Moto {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("moto_server")
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("moto_server is not on PATH: run the tests with scripts/test");
    let endpoint = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(response) = client().put(format!("{endpoint}/{BUCKET}")).send().await {
            if response.status().is_success() {
                break;
            }
        }
        assert!(Instant::now() < deadline, "moto_server did not start");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Moto { child, endpoint }
}

/// One `nullspace serve` process of the deployment.
struct Process {
    server: Server,
    url: String,
    data: PathBuf,
}

fn start_process(role: &str, data: &Path, database: &str, moto: &Moto) -> Process {
    let server = Server::start_with_args(
        data,
        &[
            "--workers",
            "1",
            "--role",
            role,
            "--lease-secs",
            "3",
            "--drain-timeout-secs",
            "0",
        ],
        &[
            ("NULLSPACE_DATABASE_URL", database),
            (
                "NULLSPACE_OBJECT_STORE",
                &format!("s3://{BUCKET}/deployment"),
            ),
            ("NULLSPACE_S3_ENDPOINT", &moto.endpoint),
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            ("AWS_REGION", "us-east-1"),
            ("NULLSPACE_MAX_ACTIVE_BUILDS_PER_OWNER", "20"),
        ],
    );
    Process {
        url: server.url.clone(),
        server,
        data: data.to_path_buf(),
    }
}

/// A counter or gauge of a process's `/metrics`.
async fn metric(process: &Process, name: &str) -> f64 {
    let text = client()
        .get(format!("{}/metrics", process.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

/// The index of the worker that reports a build running (one build runs at a time here).
async fn running_on(workers: &[Process]) -> usize {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        for (index, worker) in workers.iter().enumerate() {
            if metric(worker, "nullspace_builds_running").await >= 1.0 {
                return index;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no worker reports the build running"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The manifest digest the store recorded for a ready build.
async fn artifact_manifest(database: &str, build: &str) -> String {
    let (client, connection) = tokio_postgres::connect(database, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let row = client
        .query_one("SELECT record FROM api_builds WHERE id = $1", &[&build])
        .await
        .unwrap();
    let record: Value = serde_json::from_str(row.get::<_, &str>(0)).unwrap();
    record["result"]["artifact_manifest"]
        .as_str()
        .unwrap_or_else(|| panic!("{build} has no artifact manifest: {record}"))
        .to_string()
}

fn files_under(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else {
                out.push(path.strip_prefix(root).unwrap().to_path_buf());
            }
        }
    }
    out.sort();
    out
}

#[tokio::test]
async fn builds_spread_over_two_workers_survive_one_and_cross_hosts() {
    let base = std::env::var("NULLSPACE_TEST_POSTGRES")
        .expect("NULLSPACE_TEST_POSTGRES is unset: run the tests with scripts/test");
    let database = fresh_database(&base, &format!("ns_cluster_{}", std::process::id()));
    let registry = registry();
    let image = format!("{registry}/library/debian:bookworm");
    let moto = start_moto().await;
    let dirs = tempfile::tempdir().unwrap();
    let api = start_process("api", &dirs.path().join("api"), &database, &moto);
    let mut workers = vec![
        start_process("worker", &dirs.path().join("worker-a"), &database, &moto),
        start_process("worker", &dirs.path().join("worker-b"), &database, &moto),
    ];
    // A worker serves operations only; the API process is ready with its store.
    let (code, _) = call(
        reqwest::Method::GET,
        &format!("{}/v1/templates", workers[0].url),
        ALICE,
        None,
    )
    .await;
    assert_eq!(code, 404);
    let ready = client()
        .get(format!("{}/readyz", api.url))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status().as_u16(), 200);

    // Ten builds over both workers.
    let mut ids = Vec::new();
    for n in 0..10 {
        ids.push(
            start_build(
                &api.url,
                ALICE,
                json!({"name": format!("spread-{n}"), "base_image": image}),
            )
            .await,
        );
    }
    for id in &ids {
        let status = wait_status(&api.url, id, &["ready", "error", "cancelled"]).await;
        assert_eq!(status["build"]["status"], "ready", "{status}");
    }
    let claims = [
        metric(&workers[0], "nullspace_build_claims_total").await,
        metric(&workers[1], "nullspace_build_claims_total").await,
    ];
    assert_eq!(claims[0] + claims[1], 10.0, "{claims:?}");
    assert!(
        claims[0] >= 1.0 && claims[1] >= 1.0,
        "one worker took every build: {claims:?}"
    );

    // Every artifact, downloaded from object storage with its digests checked, is the
    // worker's own copy byte for byte.
    // The library reads credentials from the environment, as the server does.
    std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
    std::env::set_var("AWS_REGION", "us-east-1");
    let storage = nullspace_build::object_storage::ObjectStorage::open(
        &format!("s3://{BUCKET}/deployment"),
        Some(&moto.endpoint),
    )
    .unwrap();
    let mut built_on: Vec<(String, usize)> = Vec::new();
    for id in &ids {
        let manifest = artifact_manifest(&database, id).await;
        let fetched = dirs.path().join("fetched").join(id);
        storage
            .download_artifact(&manifest, &dirs.path().join("fetch-staging"), &fetched)
            .await
            .unwrap();
        let worker = workers
            .iter()
            .position(|w| {
                w.data
                    .join("templates")
                    .join(id)
                    .join("template.json")
                    .exists()
            })
            .unwrap_or_else(|| panic!("no worker holds {id}"));
        let original = workers[worker].data.join("templates").join(id);
        let files = files_under(&original);
        assert_eq!(files, files_under(&fetched), "{id}");
        for file in &files {
            assert!(
                std::fs::read(original.join(file)).unwrap()
                    == std::fs::read(fetched.join(file)).unwrap(),
                "{id}: {} differs after the round trip",
                file.display()
            );
        }
        std::fs::remove_dir_all(&fetched).unwrap();
        built_on.push((id.clone(), worker));
    }

    // Cancel reaches the worker that holds the build: it stops, and nothing is published.
    let cancelled = start_build(
        &api.url,
        ALICE,
        json!({"name": "cancelled", "base_image": image}),
    )
    .await;
    wait_status(&api.url, &cancelled, &["building"]).await;
    let holder = running_on(&workers).await;
    let (code, body) = call(
        reqwest::Method::POST,
        &format!("{}/v1/templates/builds/{cancelled}/cancel", api.url),
        ALICE,
        Some(json!({"reason": "test"})),
    )
    .await;
    assert_eq!(
        (code, body["build"]["status"].as_str()),
        (200, Some("cancelled")),
        "{body}"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(&workers[holder], "nullspace_builds_running").await > 0.0 {
        assert!(
            Instant::now() < deadline,
            "the worker kept running a cancelled build"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!workers[holder]
        .data
        .join("templates")
        .join(&cancelled)
        .exists());

    // SIGTERM of a worker mid-build (no drain time here): the build goes back to the queue and
    // the other worker finishes it; the drained worker comes back on its data dir.
    let handed = start_build(
        &api.url,
        ALICE,
        json!({"name": "handed-back", "base_image": image}),
    )
    .await;
    wait_status(&api.url, &handed, &["building"]).await;
    let draining = running_on(&workers).await;
    let pid = workers[draining].server.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = wait_status(&api.url, &handed, &["ready", "error", "cancelled"]).await;
    assert_eq!(status["build"]["status"], "ready", "{status}");
    assert!(
        status["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "retry"
                && e["message"].as_str().unwrap().contains("shutting down")),
        "{status}"
    );
    assert!(workers[draining].server.child.wait().unwrap().success());
    let data = workers[draining].data.clone();
    workers[draining] = start_process("worker", &data, &database, &moto);

    // kill -9 of the worker running a build: it ends in a definite state, with the takeover in
    // its log, and a client following the log through the API sees every entry once.
    let victim_build = start_build(
        &api.url,
        ALICE,
        json!({"name": "survivor", "base_image": image}),
    )
    .await;
    let follower = {
        let url = format!(
            "{}/v1/templates/builds/{victim_build}/logs?follow=true",
            api.url
        );
        tokio::spawn(async move {
            client()
                .get(url)
                .bearer_auth(ALICE)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        })
    };
    wait_status(&api.url, &victim_build, &["building"]).await;
    let victim = running_on(&workers).await;
    let mut killed = workers.remove(victim);
    let survivor = workers.remove(0);
    killed.server.kill(); // SIGKILL
    let status = wait_status(&api.url, &victim_build, &["ready", "error", "cancelled"]).await;
    let entries = status["entries"].as_array().unwrap();
    let retry = entries
        .iter()
        .find(|e| e["kind"] == "retry")
        .unwrap_or_else(|| panic!("no takeover in the log: {status}"));
    assert!(
        retry["message"]
            .as_str()
            .unwrap()
            .contains("stopped renewing its lease"),
        "{retry}"
    );
    assert_eq!(status["build"]["status"], "ready", "{status}");
    assert_eq!(
        entries.iter().filter(|e| e["kind"] == "end").count(),
        1,
        "{status}"
    );
    let offsets: Vec<u64> = entries
        .iter()
        .map(|e| e["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, (0..entries.len() as u64).collect::<Vec<_>>());
    let followed = frames(&follower.await.unwrap());
    assert_eq!(
        followed.len(),
        entries.len(),
        "the follower missed or repeated entries"
    );
    for ((offset, entry), stored) in followed.iter().zip(entries) {
        assert_eq!(&entry, &stored, "entry {offset}");
    }
    assert!(survivor.data.join("templates").join(&victim_build).exists());

    // A template the killed worker built is the base of a build on the survivor, which
    // fetches it from object storage.
    let (parent, _) = built_on
        .iter()
        .find(|(_, worker)| *worker == victim)
        .expect("the killed worker built none of the ten");
    assert!(!survivor.data.join("templates").join(parent).exists());
    let parent_name = format!("spread-{}", ids.iter().position(|i| i == parent).unwrap());
    let child = start_build(
        &api.url,
        ALICE,
        json!({"name": "child", "base": {"kind": "template", "value": parent_name}, "runtime_envs": {"CHILD": "1"}}),
    )
    .await;
    let status = wait_status(&api.url, &child, &["ready", "error", "cancelled"]).await;
    assert_eq!(status["build"]["status"], "ready", "{status}");
    assert!(survivor
        .data
        .join("templates")
        .join(parent)
        .join("template.json")
        .exists());
    drop(killed);

    // Layers travel through object storage too, but only to an owner that fetched them from a
    // registry itself: on a new host, Alice's build takes them from the bucket, Bob's (who
    // never pulled this image) downloads them from the registry.
    drop(survivor);
    let fresh = start_process("worker", &dirs.path().join("worker-c"), &database, &moto);
    let layer_origins = |status: &Value| -> Vec<(String, String)> {
        status["entries"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["cache_kind"] == "layer")
            .map(|e| {
                (
                    e["cache_status"].as_str().unwrap().to_string(),
                    e["cache_subject"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let alice_build = start_build(
        &api.url,
        ALICE,
        json!({"name": "layers-shared", "base_image": image}),
    )
    .await;
    let status = wait_status(&api.url, &alice_build, &["ready", "error", "cancelled"]).await;
    assert_eq!(status["build"]["status"], "ready", "{status}");
    let origins = layer_origins(&status);
    assert!(!origins.is_empty(), "{status}");
    for (cache_status, subject) in &origins {
        assert_eq!(cache_status, "hit", "{subject}");
        assert!(subject.ends_with("(from shared storage)"), "{subject}");
    }
    let bob_build = start_build(
        &api.url,
        BOB,
        json!({"name": "layers-own", "base_image": image}),
    )
    .await;
    let status = wait_status_as(&api.url, BOB, &bob_build, &["ready", "error", "cancelled"]).await;
    assert_eq!(status["build"]["status"], "ready", "{status}");
    let origins = layer_origins(&status);
    assert!(!origins.is_empty(), "{status}");
    for (cache_status, subject) in &origins {
        assert_eq!(cache_status, "stored", "{subject}");
        assert!(!subject.contains("shared"), "{subject}");
    }
    assert!(fresh.data.join("templates").join(&bob_build).exists());

    // API processes keep no build state: a context file uploaded to one is seen by another,
    // which accepts the build that names it.
    let api2 = start_process("api", &dirs.path().join("api-2"), &database, &moto);
    let content = b"uploaded through the first API process\n".to_vec();
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(&content)));
    let uploaded = client()
        .put(format!(
            "{}/v1/templates/build-context/blobs/{digest}",
            api.url
        ))
        .bearer_auth(ALICE)
        .body(content.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(uploaded.status().as_u16(), 201);
    let (code, body) = call(
        reqwest::Method::POST,
        &format!("{}/v1/templates/build-context/blobs/missing", api2.url),
        ALICE,
        Some(json!({"digests": [digest]})),
    )
    .await;
    assert_eq!((code, &body["missing"]), (200, &json!([])), "{body}");
    // Many digests at once are answered from one listing of the owner's uploads.
    let unknown: Vec<String> = (0..40)
        .map(|n| {
            format!(
                "sha256:{}",
                hex::encode(Sha256::digest(format!("never {n}")))
            )
        })
        .collect();
    let mut asked = unknown.clone();
    asked.push(digest.clone());
    let (code, body) = call(
        reqwest::Method::POST,
        &format!("{}/v1/templates/build-context/blobs/missing", api2.url),
        ALICE,
        Some(json!({ "digests": asked })),
    )
    .await;
    assert_eq!((code, &body["missing"]), (200, &json!(unknown)), "{body}");
    let head = |key: &'static str| {
        client()
            .head(format!(
                "{}/v1/templates/build-context/blobs/{digest}",
                api2.url
            ))
            .bearer_auth(key)
            .send()
    };
    assert_eq!(head(ALICE).await.unwrap().status().as_u16(), 200);
    // Bob's uploads are his own, on every process.
    assert_eq!(head(BOB).await.unwrap().status().as_u16(), 404);
    let with_context = start_build(
        &api2.url,
        ALICE,
        json!({"name": "context-across-apis",
               "dockerfile": format!("FROM {image}\nCOPY f /f\n"),
               "build_context": {"entries": [{"type": "file", "path": "f", "digest": digest, "size": content.len(), "mode": 420}]}}),
    )
    .await;
    let status = wait_status(&api.url, &with_context, &["ready", "error", "cancelled"]).await;
    assert_eq!(status["build"]["status"], "ready", "{status}");
    let rootfs = fresh
        .data
        .join("templates")
        .join(&with_context)
        .join("rootfs.ext4");
    let copied = Command::new("debugfs")
        .args(["-R", "cat /f"])
        .arg(&rootfs)
        .stderr(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(copied.stdout, content);
}
