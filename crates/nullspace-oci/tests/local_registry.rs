//! End-to-end tests against the real local registry from `scripts/devenv up`.
#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Skipped (with a message) when NULLSPACE_REGISTRY is unset; CI sets it.

use nullspace_oci::{
    BlobStore, Credentials, Error, Platform, Reference, RegistryClient, RegistryConfig,
};

/// The devenv registry named by `var`; a test run without the devenv fails (it would check
/// nothing otherwise).
fn registry(var: &str) -> String {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => v,
        _ => panic!(
            "{var} is unset: run the tests with scripts/test (or export `scripts/devenv up`)"
        ),
    }
}

async fn pull_all(
    client: &RegistryClient,
    r: &Reference,
    creds: &Credentials,
) -> nullspace_oci::ResolvedImage {
    let img = client.resolve(r, creds, &Platform::host()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::new(dir.path()).unwrap();
    let futs = img
        .layers()
        .iter()
        .map(|l| client.fetch_blob(&img, l, creds, &store, &|_| {}));
    for (res, l) in futures_util::future::join_all(futs)
        .await
        .into_iter()
        .zip(img.layers())
    {
        let path = res.unwrap();
        assert_eq!(std::fs::metadata(path).unwrap().len(), l.size);
    }
    img
}

#[tokio::test]
async fn resolves_and_fetches_debian() {
    let host = registry("NULLSPACE_REGISTRY");
    let client = RegistryClient::new(RegistryConfig::default()).unwrap();
    let r = Reference::parse(&format!("{host}/library/debian:bookworm")).unwrap();
    let img = pull_all(&client, &r, &Credentials::Anonymous).await;
    assert_eq!(img.platform.os, "linux");
    assert_eq!(img.platform.architecture, Platform::host().architecture);
    assert!(!img.layers().is_empty());
    assert_eq!(img.config.rootfs.diff_ids.len(), img.layers().len());
    // Pull by the resolved digest: same manifest.
    let by_digest =
        Reference::parse(&format!("{host}/library/debian@{}", img.manifest_digest)).unwrap();
    let again = client
        .resolve(&by_digest, &Credentials::Anonymous, &Platform::host())
        .await
        .unwrap();
    assert_eq!(again.manifest_digest, img.manifest_digest);
}

#[tokio::test]
async fn fetches_multilayer_fixture() {
    let host = registry("NULLSPACE_REGISTRY");
    let client = RegistryClient::new(RegistryConfig::default()).unwrap();
    let r = Reference::parse(&format!("{host}/nullspace/fixture-multilayer:latest")).unwrap();
    let img = pull_all(&client, &r, &Credentials::Anonymous).await;
    assert!(img.layers().len() > 1, "{} layers", img.layers().len());
}

#[tokio::test]
async fn docker_hub_mirror_serves_short_names() {
    let host = registry("NULLSPACE_REGISTRY");
    let mut mirrors = std::collections::HashMap::new();
    mirrors.insert("docker.io".to_owned(), vec![format!("http://{host}")]);
    let client = RegistryClient::new(RegistryConfig {
        mirrors,
        ..Default::default()
    })
    .unwrap();
    let r = Reference::parse("debian:bookworm").unwrap();
    let img = client
        .resolve(&r, &Credentials::Anonymous, &Platform::host())
        .await
        .unwrap();
    assert_eq!(
        img.reference.as_ref().map(ToString::to_string).as_deref(),
        Some("docker.io/library/debian:bookworm")
    );
}

#[tokio::test]
async fn basic_auth_registry_accepts_and_rejects() {
    let host = registry("NULLSPACE_AUTH_REGISTRY");
    let client = RegistryClient::new(RegistryConfig::default()).unwrap();
    let r = Reference::parse(&format!("{host}/library/debian:bookworm")).unwrap();
    let fresh = RegistryClient::new(RegistryConfig::default()).unwrap();
    let err = fresh
        .resolve(
            &r,
            &Credentials::basic("nullspace", "definitely-wrong-pw"),
            &Platform::host(),
        )
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::AuthRejected { .. }), "{msg}");
    assert!(
        msg.contains(&host) && msg.contains("authentication was rejected"),
        "{msg}"
    );
    assert!(!msg.contains("definitely-wrong-pw"));
    let err = fresh
        .resolve(&r, &Credentials::Anonymous, &Platform::host())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::AuthRejected { .. }), "{err}");
    let good = Credentials::basic("nullspace", "nullspace-test-pw");
    let img = client.resolve(&r, &good, &Platform::host()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::new(dir.path()).unwrap();
    let first = img.layers().first().unwrap();
    client
        .fetch_blob(&img, first, &good, &store, &|_| {})
        .await
        .unwrap();
}
