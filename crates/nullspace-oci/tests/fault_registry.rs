//! The registry client against a deliberately faulty registry run in-process.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use common::*;
use nullspace_oci::{
    BlobStore, Credentials, Digest, Error, Platform, Reference, RegistryClient, RegistryConfig,
    RetryPolicy,
};
use serde_json::json;

fn host_platform() -> Platform {
    Platform::host()
}

fn reference(host: &str, repo_tag: &str) -> Reference {
    Reference::parse(&format!("{host}/{repo_tag}")).unwrap()
}

async fn fetch_all(
    client: &RegistryClient,
    img: &nullspace_oci::ResolvedImage,
    creds: &Credentials,
    store: &BlobStore,
) -> Result<(), Error> {
    for l in img.layers() {
        client.fetch_blob(img, l, creds, store, &|_| {}).await?;
    }
    Ok(())
}

#[tokio::test]
async fn token_flow_with_basic_credentials_and_cache() {
    let reg = Registry::new(
        AuthMode::Token(Some(("robot".into(), "s3cret".into()))),
        Faults::default(),
    );
    let img = TestImage::new(&host_platform(), json!({}), &[1000, 2000]);
    reg.put_image("team/app", "1.0", &img);
    let host = reg.start().await;
    let client = client();
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::new(dir.path()).unwrap();
    let creds = Credentials::basic("robot", "s3cret");
    let r = reference(&host, "team/app:1.0");
    let resolved = client.resolve(&r, &creds, &host_platform()).await.unwrap();
    assert_eq!(resolved.manifest_digest, img.manifest_digest());
    assert_eq!(resolved.config.config.cmd, vec!["sh"]);
    fetch_all(&client, &resolved, &creds, &store).await.unwrap();
    for l in &img.layers {
        assert_eq!(
            std::fs::read(store.path(&Digest::sha256_of(l))).unwrap(),
            *l
        );
    }
    // One token, cached for the manifest, config and both layers.
    assert_eq!(reg.stats.token_requests.load(Ordering::SeqCst), 1);

    // Wrong password: rejected, registry named, password never shown.
    let fresh = common::client();
    let err = fresh
        .resolve(
            &r,
            &Credentials::basic("robot", "wrong-pw-123"),
            &host_platform(),
        )
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, Error::AuthRejected { status: 401, .. }),
        "{msg}"
    );
    assert!(
        msg.contains(&host) && msg.contains("authentication was rejected"),
        "{msg}"
    );
    assert!(!msg.contains("wrong-pw-123") && !format!("{err:?}").contains("wrong-pw-123"));

    // Anonymous: the token server refuses; the hint says no credentials were given.
    let err = common::client()
        .resolve(&r, &Credentials::Anonymous, &host_platform())
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("no credentials were given"),
        "{err}"
    );
}

#[tokio::test]
async fn anonymous_token_and_preissued_bearer() {
    let reg = Registry::new(AuthMode::Token(None), Faults::default());
    let img = TestImage::new(&host_platform(), json!({}), &[10]);
    reg.put_image("lib/x", "latest", &img);
    let host = reg.start().await;
    let r = reference(&host, "lib/x");
    client()
        .resolve(&r, &Credentials::Anonymous, &host_platform())
        .await
        .unwrap();
    assert_eq!(reg.stats.token_requests.load(Ordering::SeqCst), 1);
    client()
        .resolve(
            &r,
            &Credentials::Bearer("good-token".into()),
            &host_platform(),
        )
        .await
        .unwrap();
    assert_eq!(reg.stats.token_requests.load(Ordering::SeqCst), 1);
    let err = client()
        .resolve(&r, &Credentials::Bearer("bad".into()), &host_platform())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::AuthRejected { .. }), "{err}");
}

#[tokio::test]
async fn basic_auth_registry() {
    let reg = Registry::new(AuthMode::Basic("u".into(), "p".into()), Faults::default());
    let img = TestImage::new(&host_platform(), json!({}), &[10]);
    reg.put_image("a/b", "t", &img);
    let host = reg.start().await;
    let r = reference(&host, "a/b:t");
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::new(dir.path()).unwrap();
    let c = client();
    let creds = Credentials::basic("u", "p");
    let res = c.resolve(&r, &creds, &host_platform()).await.unwrap();
    fetch_all(&c, &res, &creds, &store).await.unwrap();
    let err = client()
        .resolve(
            &r,
            &Credentials::basic("u", "nope-secret"),
            &host_platform(),
        )
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("authentication was rejected"),
        "{err}"
    );
    assert!(!err.to_string().contains("nope-secret"));
}

#[tokio::test]
async fn docker_config_fallback_credentials() {
    let reg = Registry::new(AuthMode::Basic("u".into(), "p".into()), Faults::default());
    let img = TestImage::new(&host_platform(), json!({}), &[10]);
    reg.put_image("a/b", "t", &img);
    let host = reg.start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg_path = dir.path().join("config.json");
    use base64::Engine as _;
    let auth = base64::engine::general_purpose::STANDARD.encode("u:p");
    std::fs::write(
        &cfg_path,
        format!(r#"{{"auths":{{"{host}":{{"auth":"{auth}"}}}}}}"#),
    )
    .unwrap();
    let client = RegistryClient::new(RegistryConfig {
        docker_config: Some(cfg_path),
        ..Default::default()
    })
    .unwrap();
    client
        .resolve(
            &reference(&host, "a/b:t"),
            &Credentials::Anonymous,
            &host_platform(),
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn corrupted_blob_is_rejected_and_nothing_is_stored() {
    let reg = Registry::new(AuthMode::None, Faults::default());
    let img = TestImage::new(&host_platform(), json!({}), &[4096]);
    reg.put_image("x/y", "t", &img);
    let layer_digest = Digest::sha256_of(&img.layers[0]);
    let mut corrupt = img.layers[0].clone();
    corrupt[100] ^= 0xff;
    reg.blobs
        .lock()
        .unwrap()
        .insert(layer_digest.to_string(), corrupt);
    let host = reg.start().await;
    let c = client();
    let res = c
        .resolve(
            &reference(&host, "x/y:t"),
            &Credentials::Anonymous,
            &host_platform(),
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::new(dir.path()).unwrap();
    let err = c
        .fetch_blob(
            &res,
            &res.layers()[0],
            &Credentials::Anonymous,
            &store,
            &|_| {},
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::BlobDigestMismatch { .. }), "{err}");
    assert!(err.to_string().contains(&layer_digest.to_string()), "{err}");
    assert!(!store.contains(&layer_digest));
    assert_eq!(
        std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
        0
    );
}

#[tokio::test]
async fn corrupted_config_and_manifest_by_digest_are_rejected() {
    let reg = Registry::new(AuthMode::None, Faults::default());
    let img = TestImage::new(&host_platform(), json!({}), &[16]);
    reg.put_image("x/y", "t", &img);
    let cfg_digest = Digest::sha256_of(&img.config);
    let mut bad = img.config.clone();
    bad[0] = b' ';
    reg.blobs
        .lock()
        .unwrap()
        .insert(cfg_digest.to_string(), bad);
    // The manifest requested by digest returns other bytes.
    let other = TestImage::new(&host_platform(), json!({}), &[17]);
    let wanted = img.manifest_digest();
    reg.manifests.lock().unwrap().insert(
        ("x/y".into(), wanted.to_string()),
        (OCI_MANIFEST.into(), other.manifest.clone()),
    );
    let host = reg.start().await;
    let err = client()
        .resolve(
            &reference(&host, "x/y:t"),
            &Credentials::Anonymous,
            &host_platform(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::BlobDigestMismatch { .. }), "{err}");
    let r = Reference::parse(&format!("{host}/x/y@{wanted}")).unwrap();
    let err = client()
        .resolve(&r, &Credentials::Anonymous, &host_platform())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::ManifestDigestMismatch { .. }), "{err}");
    assert!(err.to_string().contains(&wanted.to_string()));
}

async fn dropped_transfer(support_range: bool) -> Arc<Registry> {
    let faults = Faults {
        support_range,
        ..Default::default()
    };
    let reg = Registry::new(AuthMode::None, faults);
    let img = TestImage::new(&host_platform(), json!({}), &[300_000]);
    reg.put_image("x/y", "t", &img);
    let host = reg.start().await;
    let c = client();
    // A broken config transfer is retried too.
    reg.faults.drop_blob.store(1, Ordering::SeqCst);
    let res = c
        .resolve(
            &reference(&host, "x/y:t"),
            &Credentials::Anonymous,
            &host_platform(),
        )
        .await
        .unwrap();
    reg.faults.drop_blob.store(2, Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::new(dir.path()).unwrap();
    let seen = std::sync::Mutex::new(Vec::new());
    let p = c
        .fetch_blob(
            &res,
            &res.layers()[0],
            &Credentials::Anonymous,
            &store,
            &|n| seen.lock().unwrap().push(n),
        )
        .await
        .unwrap();
    assert_eq!(std::fs::read(p).unwrap(), img.layers[0]);
    assert_eq!(seen.lock().unwrap().last().copied(), Some(300_000));
    reg
}

#[tokio::test]
async fn dropped_connection_resumes_with_range() {
    let reg = dropped_transfer(true).await;
    assert!(reg.stats.range_requests.load(Ordering::SeqCst) >= 2);
}

#[tokio::test]
async fn dropped_connection_restarts_without_range_support() {
    let reg = dropped_transfer(false).await;
    assert!(reg.stats.range_requests.load(Ordering::SeqCst) >= 2);
}

#[tokio::test]
async fn server_errors_then_success() {
    let reg = Registry::new(AuthMode::None, Faults::default());
    let img = TestImage::new(&host_platform(), json!({}), &[1000]);
    reg.put_image("x/y", "t", &img);
    reg.faults.fail_5xx.store(3, Ordering::SeqCst);
    let host = reg.start().await;
    let c = client();
    let res = c
        .resolve(
            &reference(&host, "x/y:t"),
            &Credentials::Anonymous,
            &host_platform(),
        )
        .await
        .unwrap();
    reg.faults.fail_5xx.store(2, Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::new(dir.path()).unwrap();
    fetch_all(&c, &res, &Credentials::Anonymous, &store)
        .await
        .unwrap();
    // Bounded: endless 5xx gives up with the status.
    reg.faults.fail_5xx.store(1000, Ordering::SeqCst);
    let err = c
        .resolve(
            &reference(&host, "x/y:t"),
            &Credentials::Anonymous,
            &host_platform(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Status { status: 503, .. }), "{err}");
}

fn platform_json(p: &str) -> serde_json::Value {
    let parts: Vec<&str> = p.split('/').collect();
    let mut v = json!({"os": parts[0], "architecture": parts[1]});
    if let Some(var) = parts.get(2) {
        v["variant"] = json!(var);
    }
    v
}

#[tokio::test]
async fn multi_platform_index_with_attestations() {
    let reg = Registry::new(AuthMode::None, Faults::default());
    let amd = TestImage::new(&Platform::parse("linux/amd64").unwrap(), json!({}), &[11]);
    let arm = TestImage::new(
        &Platform::parse("linux/arm64/v8").unwrap(),
        json!({"variant": "v8"}),
        &[12],
    );
    let att = TestImage::new(
        &Platform::parse("unknown/unknown").unwrap(),
        json!({}),
        &[13],
    );
    for (i, t) in [&amd, &arm, &att].into_iter().enumerate() {
        reg.put_image("multi/img", &format!("p{i}"), t);
    }
    let mut att_entry = index_entry(&att.manifest, platform_json("unknown/unknown"));
    att_entry["annotations"] = json!({"vnd.docker.reference.type": "attestation-manifest", "vnd.docker.reference.digest": amd.manifest_digest().to_string()});
    let index = index_of(vec![
        att_entry,
        index_entry(&amd.manifest, platform_json("linux/amd64")),
        index_entry(&arm.manifest, platform_json("linux/arm64/v8")),
    ]);
    reg.put_manifest("multi/img", "latest", OCI_INDEX, &index);
    let host = reg.start().await;
    let r = reference(&host, "multi/img");
    let c = client();
    let got = c
        .resolve(
            &r,
            &Credentials::Anonymous,
            &Platform::parse("linux/amd64/v1").unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(got.manifest_digest, amd.manifest_digest());
    assert_eq!(got.index_digest, Some(Digest::sha256_of(&index)));
    let got = c
        .resolve(
            &r,
            &Credentials::Anonymous,
            &Platform::parse("linux/arm64/v8").unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(got.manifest_digest, arm.manifest_digest());
    assert_eq!(got.platform.to_string(), "linux/arm64/v8");
}

#[tokio::test]
async fn index_with_only_os_features_is_rejected() {
    let reg = Registry::new(AuthMode::None, Faults::default());
    let img = TestImage::new(&host_platform(), json!({}), &[11]);
    reg.put_image("f/x", "m", &img);
    let mut p = platform_json(&host_platform().to_string());
    p["os.features"] = json!(["special"]);
    let mut q = platform_json(&format!("linux/{}", host_platform().architecture));
    q["os.version"] = json!("6.1");
    reg.put_manifest(
        "f/x",
        "latest",
        OCI_INDEX,
        &index_of(vec![
            index_entry(&img.manifest, p),
            index_entry(&img.manifest, q),
        ]),
    );
    let host = reg.start().await;
    let err = client()
        .resolve(
            &reference(&host, "f/x"),
            &Credentials::Anonymous,
            &host_platform(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NoMatchingPlatform { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("os.features special rejected") && msg.contains("os.version 6.1 rejected"),
        "{msg}"
    );
}

#[tokio::test]
async fn os_features_in_config_are_rejected() {
    let reg = Registry::new(AuthMode::None, Faults::default());
    let img = TestImage::new(&host_platform(), json!({"os.features": ["x"]}), &[11]);
    reg.put_image("f/x", "latest", &img);
    let host = reg.start().await;
    let err = client()
        .resolve(
            &reference(&host, "f/x"),
            &Credentials::Anonymous,
            &host_platform(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::PlatformRejected { .. }), "{err}");
    assert!(err.to_string().contains("os.features"), "{err}");
}

#[tokio::test]
async fn no_matching_platform_lists_offers() {
    let reg = Registry::new(AuthMode::None, Faults::default());
    let img = TestImage::new(&Platform::parse("linux/s390x").unwrap(), json!({}), &[11]);
    reg.put_image("n/x", "s", &img);
    reg.put_manifest(
        "n/x",
        "latest",
        OCI_INDEX,
        &index_of(vec![
            index_entry(&img.manifest, platform_json("linux/s390x")),
            index_entry(&img.manifest, platform_json("windows/amd64")),
            index_entry(&img.manifest, platform_json("linux/amd64/v3")),
        ]),
    );
    let host = reg.start().await;
    let err = client()
        .resolve(
            &reference(&host, "n/x"),
            &Credentials::Anonymous,
            &Platform::parse("linux/amd64/v1").unwrap(),
        )
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("linux/s390x, windows/amd64, linux/amd64/v3"),
        "{msg}"
    );
    assert!(
        msg.contains("linux/amd64/v1") && msg.contains("n/x"),
        "{msg}"
    );
    // A single-platform image for another architecture is rejected too.
    let err = client()
        .resolve(
            &reference(&host, "n/x:s"),
            &Credentials::Anonymous,
            &Platform::parse("linux/amd64/v1").unwrap(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::PlatformRejected { .. }), "{err}");
}

#[tokio::test]
async fn schema1_and_unknown_media_types() {
    let reg = Registry::new(AuthMode::None, Faults::default());
    let s1 = br#"{"schemaVersion":1,"name":"old/img","tag":"v1","architecture":"amd64","fsLayers":[],"history":[],"signatures":[]}"#;
    reg.put_manifest(
        "old/img",
        "v1",
        "application/vnd.docker.distribution.manifest.v1+prettyjws",
        s1,
    );
    reg.put_manifest(
        "old/img",
        "v2",
        "application/vnd.example.weird+json",
        br#"{"schemaVersion":2,"mediaType":"application/vnd.example.weird+json"}"#,
    );
    let host = reg.start().await;
    let err = client()
        .resolve(
            &reference(&host, "old/img:v1"),
            &Credentials::Anonymous,
            &host_platform(),
        )
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("unsupported: docker schema 1 manifest"),
        "{err}"
    );
    let err = client()
        .resolve(
            &reference(&host, "old/img:v2"),
            &Credentials::Anonymous,
            &host_platform(),
        )
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("application/vnd.example.weird+json"),
        "{err}"
    );
    let err = client()
        .resolve(
            &reference(&host, "old/img:missing"),
            &Credentials::Anonymous,
            &host_platform(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err}");
}

#[tokio::test]
async fn foreign_layer_from_urls() {
    let reg = Registry::new(AuthMode::None, Faults::default());
    let mut img = TestImage::new(&host_platform(), json!({}), &[500]);
    let foreign: Vec<u8> = (0..777u32).map(|i| (i % 13) as u8).collect();
    let fd = Digest::sha256_of(&foreign);
    let host = reg.start().await;
    let mut m: serde_json::Value = serde_json::from_slice(&img.manifest).unwrap();
    m["layers"].as_array_mut().unwrap().push(json!({
        "mediaType": "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
        "digest": fd.to_string(), "size": foreign.len(),
        "urls": [format!("http://{host}/external/{fd}")]
    }));
    img.manifest = serde_json::to_vec(&m).unwrap();
    reg.put_image("win/img", "1", &img);
    reg.external
        .lock()
        .unwrap()
        .insert(fd.to_string(), foreign.clone());
    let c = client();
    let res = c
        .resolve(
            &reference(&host, "win/img:1"),
            &Credentials::Anonymous,
            &host_platform(),
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::new(dir.path()).unwrap();
    let p = c
        .fetch_blob(
            &res,
            &res.layers()[1],
            &Credentials::Anonymous,
            &store,
            &|_| {},
        )
        .await
        .unwrap();
    assert_eq!(std::fs::read(p).unwrap(), foreign);
}

#[tokio::test]
async fn redirects_do_not_forward_authorization() {
    let faults = Faults {
        redirect_blobs: true,
        ..Default::default()
    };
    let reg = Registry::new(AuthMode::Basic("u".into(), "p".into()), faults);
    let img = TestImage::new(&host_platform(), json!({}), &[2048]);
    reg.put_image("r/x", "t", &img);
    let host = reg.start().await;
    let c = client();
    let creds = Credentials::basic("u", "p");
    let res = c
        .resolve(&reference(&host, "r/x:t"), &creds, &host_platform())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::new(dir.path()).unwrap();
    fetch_all(&c, &res, &creds, &store).await.unwrap();
    let seen = reg.stats.storage_auth.lock().unwrap().clone();
    assert!(!seen.is_empty());
    assert!(
        seen.iter().all(String::is_empty),
        "authorization forwarded: {seen:?}"
    );
}

#[tokio::test]
async fn mirrors_tried_in_order_then_upstream() {
    let reg = Registry::new(AuthMode::None, Faults::default());
    let img = TestImage::new(&host_platform(), json!({}), &[100, 200]);
    reg.put_image("library/debian", "bookworm", &img);
    let host = reg.start().await;
    let mut mirrors = std::collections::HashMap::new();
    // A dead mirror first (nothing listens on port 1), then the working one.
    mirrors.insert(
        "docker.io".to_owned(),
        vec!["http://127.0.0.1:1".to_owned(), format!("http://{host}")],
    );
    let c = RegistryClient::with_retry(
        RegistryConfig {
            mirrors,
            ..Default::default()
        },
        RetryPolicy {
            max_attempts: 2,
            base_delay: std::time::Duration::from_millis(5),
            max_delay: std::time::Duration::from_millis(5),
        },
    )
    .unwrap();
    let r = Reference::parse("debian:bookworm").unwrap();
    let res = c
        .resolve(
            &r,
            &Credentials::basic("never", "sent-to-mirror"),
            &host_platform(),
        )
        .await
        .unwrap();
    assert_eq!(res.manifest_digest, img.manifest_digest());
    assert!(
        matches!(&res.source, nullspace_oci::ImageSource::Registry { endpoint } if endpoint == &format!("http://{host}"))
    );
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::new(dir.path()).unwrap();
    // Layers in parallel.
    let futs = res
        .layers()
        .iter()
        .map(|l| c.fetch_blob(&res, l, &Credentials::Anonymous, &store, &|_| {}));
    for r in futures_util::future::join_all(futs).await {
        r.unwrap();
    }
    // A plain-http mirror for a non-loopback host is refused at construction.
    let mut bad = std::collections::HashMap::new();
    bad.insert(
        "docker.io".to_owned(),
        vec!["http://mirror.example.com".to_owned()],
    );
    let err = RegistryClient::new(RegistryConfig {
        mirrors: bad,
        ..Default::default()
    })
    .unwrap_err();
    assert!(matches!(err, Error::InsecureNotAllowed { .. }), "{err}");
}
