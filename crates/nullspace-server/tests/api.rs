//! The API with the real `nullspace serve` binary: SSE replay from an offset, follow until the
//! end, two callers isolated, a restart during a build, and the OpenAPI file.
//!
//! The binary is `$NULLSPACE_BIN`, else `<target>/debug/nullspace` (built on demand). Tests that
//! pull images need the local registries (`scripts/devenv up`, which `scripts/test` runs).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

#[tokio::test]
async fn sse_replays_from_an_offset_and_follows_to_the_end() {
    let registry = registry();
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path());
    let (code, build) = call(
        reqwest::Method::POST,
        &format!("{}/v1/templates/builds", server.url),
        ALICE,
        Some(json!({"name": "sse", "base_image": format!("{registry}/library/debian:bookworm")})),
    )
    .await;
    assert_eq!(code, 202, "{build}");
    let id = build["build_id"].as_str().unwrap().to_string();
    // Follow from the start while the build runs: every entry once, in order, until `end`.
    let followed = client()
        .get(format!(
            "{}/v1/templates/builds/{id}/logs?follow=true",
            server.url
        ))
        .bearer_auth(ALICE)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let followed = frames(&followed);
    let offsets: Vec<u64> = followed.iter().map(|(o, _)| *o).collect();
    assert_eq!(offsets, (0..followed.len() as u64).collect::<Vec<_>>());
    assert_eq!(followed.last().unwrap().1["kind"], "end");
    assert_eq!(followed.last().unwrap().1["result"], "ready");
    assert!(followed
        .iter()
        .all(|(o, e)| e["offset"] == *o && e["build_id"] == id.as_str()));
    // Replay from offset 2 (and via `cursor`): the same entries.
    for query in ["offset=2", "cursor=2", "cursor=0&offset=2"] {
        let replay = client()
            .get(format!(
                "{}/v1/templates/builds/{id}/logs?{query}",
                server.url
            ))
            .bearer_auth(ALICE)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(frames(&replay), followed[2..].to_vec(), "{query}");
    }
    let status = wait_status(&server.url, &id, &["ready"]).await;
    assert_eq!(status["next_offset"], followed.len());
}

#[tokio::test]
async fn two_callers_are_isolated() {
    let data = tempfile::tempdir().unwrap();
    let (hole, address) = blackhole();
    let server = Server::start_with_env(data.path(), &allowing(&[&address]));
    let (_, build) = call(
        reqwest::Method::POST,
        &format!("{}/v1/templates/builds", server.url),
        ALICE,
        Some(json!({"name": "iso", "base_image": format!("{address}/a/b:1")})),
    )
    .await;
    let id = build["build_id"].as_str().unwrap();
    for (method, path) in [
        (reqwest::Method::GET, format!("/v1/templates/builds/{id}")),
        (
            reqwest::Method::GET,
            format!("/v1/templates/builds/{id}/logs"),
        ),
        (
            reqwest::Method::POST,
            format!("/v1/templates/builds/{id}/cancel"),
        ),
        (
            reqwest::Method::POST,
            format!("/v1/templates/builds/{id}/retry"),
        ),
    ] {
        let (code, body) = call(
            method,
            &format!("{}{path}", server.url),
            BOB,
            Some(json!({})),
        )
        .await;
        assert_eq!(code, 404, "{path}: {body}");
        assert_eq!(body["code"], "template_build_not_found");
    }
    let (code, body) = call(
        reqwest::Method::GET,
        &format!("{}/v1/templates/iso/builds", server.url),
        BOB,
        None,
    )
    .await;
    assert_eq!(
        (code, body["code"].as_str()),
        (404, Some("template_not_found"))
    );
    let (code, body) = call(
        reqwest::Method::GET,
        &format!("{}/v1/templates/builds/{id}", server.url),
        "not-a-key-at-all",
        None,
    )
    .await;
    assert_eq!((code, body["code"].as_str()), (401, Some("unauthorized")));
    let (code, body) = call(
        reqwest::Method::POST,
        &format!("{}/v1/templates/builds/{id}/cancel", server.url),
        ALICE,
        Some(json!({"reason": "done"})),
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(body["build"]["status"], "cancelled");
    drop(hole);
}

#[tokio::test]
async fn a_restart_during_a_build_fails_it_with_a_reason() {
    let data = tempfile::tempdir().unwrap();
    let (hole, address) = blackhole();
    let mut server = Server::start_with_env(data.path(), &allowing(&[&address]));
    let (_, build) = call(
        reqwest::Method::POST,
        &format!("{}/v1/templates/builds", server.url),
        ALICE,
        Some(json!({"name": "crash", "base_image": format!("{address}/a/b:1")})),
    )
    .await;
    let id = build["build_id"].as_str().unwrap().to_string();
    wait_status(&server.url, &id, &["building"]).await;
    let staging = data.path().join("staging").join(&id);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !staging.exists() {
        assert!(Instant::now() < deadline, "no staging dir for {id}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.kill();
    let mut server = Server::start_with_env(data.path(), &allowing(&[&address]));
    let shared_store = database_for(data.path()).is_some();
    let reason = if shared_store {
        // With PostgreSQL the dead server's lease lapses and the build runs once more (here
        // again, on the restarted server); killed again, it ends for good.
        let status = wait_status(&server.url, &id, &["building"]).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let status = wait_status(&server.url, &id, &["building"]).await;
            let entries = status["entries"].as_array().unwrap().clone();
            if entries.iter().any(|e| e["kind"] == "retry")
                && entries.last().unwrap()["kind"] != "retry"
            {
                assert!(
                    entries.iter().filter(|e| e["kind"] == "start").count() == 2,
                    "{status}"
                );
                break;
            }
            assert!(Instant::now() < deadline, "never retried: {status}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        drop(status);
        server.kill();
        server = Server::start_with_env(data.path(), &allowing(&[&address]));
        "stopped renewing its lease"
    } else {
        "server stopped"
    };
    let status = wait_status(&server.url, &id, &["error"]).await;
    assert_eq!(status["build"]["failure_phase"], "build");
    let entries = status["entries"].as_array().unwrap();
    let error = &entries[entries.len() - 2];
    assert_eq!(error["kind"], "error");
    assert!(
        error["message"].as_str().unwrap().contains(reason),
        "{error}"
    );
    assert_eq!(entries.last().unwrap()["kind"], "end");
    assert!(!data.path().join("staging").join(&id).exists());
    drop(hole);
}

/// Request-time credentials live only in the memory of the process that took the request, and
/// only it may start the build. When it dies with the build still waiting for a worker, the
/// build ends with the reason instead of waiting for ever: at the restart on one host, or, on
/// PostgreSQL, once that process was silent for a lease and a half.
#[tokio::test]
async fn a_waiting_build_whose_credentials_died_with_their_process_ends() {
    let data = tempfile::tempdir().unwrap();
    let (hole, address) = blackhole();
    let env = allowing(&[&address]);
    let mut server = Server::start_with_env(data.path(), &env);
    let hanging = format!("{address}/a/b:1");
    // Two builds hanging on the black hole take both workers.
    for n in 0..2 {
        let id = start_build(
            &server.url,
            ALICE,
            json!({"name": format!("busy-{n}"), "base_image": hanging}),
        )
        .await;
        wait_status(&server.url, &id, &["building"]).await;
    }
    let held = start_build(
        &server.url,
        ALICE,
        json!({"name": "held", "base_image": hanging,
               "base_image_auth": {"username": "someone", "password": "secret"}}),
    )
    .await;
    wait_status(&server.url, &held, &["waiting"]).await;
    server.kill();
    let server = Server::start_with_env(data.path(), &env);
    let status = wait_status(&server.url, &held, &["error"]).await;
    assert_eq!(status["build"]["failure_phase"], "prepare", "{status}");
    let message = status["build"]["error"].as_str().unwrap_or_default();
    assert!(message.contains("held in memory only"), "{status}");
    assert!(
        message.contains("retry with fresh base_image_auth"),
        "{status}"
    );
    drop(hole);
}

/// A `waiting` record this version cannot read (written by a newer one during a rolling
/// upgrade, or damaged) is passed over: the builds queued after it still run.
#[tokio::test]
async fn an_unreadable_queued_record_does_not_stop_the_queue() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path());
    let image = format!("{}/library/debian:bookworm", registry());
    let first = start_build(
        &server.url,
        ALICE,
        json!({"name": "queue-head", "base_image": image}),
    )
    .await;
    let status = wait_status(&server.url, &first, &["ready", "error"]).await;
    assert_eq!(status["build"]["status"], "ready", "{status}");
    let template_id = status["build"]["template_id"].as_str().unwrap().to_string();
    store_rows(
        data.path(),
        "INSERT INTO api_builds (id, owner, template_id, status, backend, record)
         VALUES ($1, 'alice', $2, 'waiting', 'native', '{\"written_by\": \"a newer version\"}')",
        &["tb_unreadable00000000", &template_id],
    );
    let next = start_build(
        &server.url,
        ALICE,
        json!({"name": "queue-head", "base_image": image}),
    )
    .await;
    let status = wait_status(&server.url, &next, &["ready", "error"]).await;
    assert_eq!(status["build"]["status"], "ready", "{status}");
    let left = store_rows(
        data.path(),
        "SELECT status FROM api_builds WHERE id = $1",
        &["tb_unreadable00000000"],
    );
    assert_eq!(left, vec![vec![Some("waiting".to_string())]]);
}

#[tokio::test]
async fn the_served_openapi_document_is_the_file_in_the_repository() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path());
    let served = client()
        .get(format!("{}/openapi.json", server.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let file = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi.json"))
        .unwrap();
    assert_eq!(served, file);
    let document: Value = serde_json::from_str(&file).unwrap();
    for path in [
        "/v1/templates/builds",
        "/v1/templates/builds/{build_id}",
        "/v1/templates/builds/{build_id}/logs",
        "/v1/templates/builds/{build_id}/cancel",
        "/v1/templates/builds/{build_id}/retry",
        "/v1/templates/builds/{build_id}/promote",
        "/v1/templates/validate",
        "/v1/templates/plan",
        "/v1/templates/{template}/builds",
        "/v1/templates/refs/{ref}",
        "/v1/templates",
    ] {
        assert!(document["paths"].get(path).is_some(), "{path} undocumented");
    }
}

/// The operator's Docker credentials are never lent to a tenant. The server's Docker config
/// can log in to the devenv's auth registry; a build from that registry that brings no
/// credentials of its own is refused by the registry, for an image import and for a
/// Dockerfile alike, while the same import with `base_image_auth` works.
#[tokio::test]
async fn tenants_never_borrow_the_operators_registry_credentials() {
    let auth_registry = std::env::var("NULLSPACE_AUTH_REGISTRY")
        .expect("NULLSPACE_AUTH_REGISTRY is unset: run the tests with scripts/test");
    let data = tempfile::tempdir().unwrap();
    let docker_config = tempfile::tempdir().unwrap();
    std::fs::write(
        docker_config.path().join("config.json"),
        json!({"auths": {&auth_registry: {"auth": "bnVsbHNwYWNlOm51bGxzcGFjZS10ZXN0LXB3"}}})
            .to_string(),
    )
    .unwrap();
    // buildx itself still comes from the devenv's client config.
    if let Some(devenv) = std::env::var_os("DOCKER_CONFIG") {
        for sub in ["cli-plugins", "buildx"] {
            let source = Path::new(&devenv).join(sub);
            if source.exists() {
                std::os::unix::fs::symlink(&source, docker_config.path().join(sub)).unwrap();
            }
        }
    }
    let server = Server::start_with_env(data.path(), &[("DOCKER_CONFIG", docker_config.path())]);
    let image = format!("{auth_registry}/library/debian:bookworm");
    let start = |body: Value| start_build(&server.url, ALICE, body);
    let import = start(json!({"name": "borrowed", "base_image": image})).await;
    let dockerfile = start(json!({
        "name": "borrowed-df",
        "dockerfile": format!("FROM {image}\nRUN true\n"),
    }))
    .await;
    for build in [&import, &dockerfile] {
        let status = wait_status(&server.url, build, &["ready", "error"]).await;
        assert_eq!(status["build"]["status"], "error", "{status}");
        let message = status["build"]["error"]
            .as_str()
            .unwrap_or_default()
            .to_lowercase();
        assert!(
            ["401", "unauthorized", "authentication", "credentials"]
                .iter()
                .any(|needle| message.contains(needle)),
            "{message}"
        );
    }
    let with_auth = start(json!({
        "name": "own-credentials",
        "base_image": image,
        "base_image_auth": {"username": "nullspace", "password": "nullspace-test-pw"},
    }))
    .await;
    let status = wait_status(&server.url, &with_auth, &["ready", "error"]).await;
    assert_eq!(status["build"]["status"], "ready", "{status}");
}
