//! OCI layout directories, OCI archives and docker archives.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use common::*;
use nullspace_oci::{
    open_docker_archive, open_oci_archive, open_oci_layout, BlobStore, Digest, Error, ImageSource,
    Platform,
};
use serde_json::json;

fn write_blob(dir: &Path, bytes: &[u8]) {
    let d = Digest::sha256_of(bytes);
    let p = dir.join("blobs/sha256");
    std::fs::create_dir_all(&p).unwrap();
    std::fs::write(p.join(d.hex()), bytes).unwrap();
}

/// A layout holding a multi-platform image (BuildKit style: index.json → index → manifests,
/// with an attestation entry).
fn build_layout(dir: &Path) -> (TestImage, TestImage) {
    let host = Platform::host();
    let mine = TestImage::new(&host, json!({}), &[1000, 2000]);
    let other_arch = if host.architecture == "amd64" {
        "arm64"
    } else {
        "amd64"
    };
    let other = TestImage::new(
        &Platform::parse(&format!("linux/{other_arch}")).unwrap(),
        json!({}),
        &[30],
    );
    let att = TestImage::new(
        &Platform::parse("unknown/unknown").unwrap(),
        json!({}),
        &[5],
    );
    for img in [&mine, &other, &att] {
        write_blob(dir, &img.manifest);
        write_blob(dir, &img.config);
        for l in &img.layers {
            write_blob(dir, l);
        }
    }
    let mut att_entry = index_entry(
        &att.manifest,
        json!({"os": "unknown", "architecture": "unknown"}),
    );
    att_entry["annotations"] = json!({"vnd.docker.reference.type": "attestation-manifest"});
    let inner = index_of(vec![
        index_entry(
            &mine.manifest,
            json!({"os": "linux", "architecture": host.architecture}),
        ),
        index_entry(
            &other.manifest,
            json!({"os": "linux", "architecture": other_arch}),
        ),
        att_entry,
    ]);
    write_blob(dir, &inner);
    let mut top = desc(OCI_INDEX, &inner);
    top["annotations"] = json!({"org.opencontainers.image.ref.name": "latest", "io.containerd.image.name": "example.com/team/app:latest"});
    std::fs::write(dir.join("index.json"), index_of(vec![top])).unwrap();
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    (mine, other)
}

fn tar_dir(dir: &Path, out: &Path) {
    let f = std::fs::File::create(out).unwrap();
    let mut b = tar::Builder::new(f);
    b.append_dir_all(".", dir).unwrap();
    b.finish().unwrap();
}

#[test]
fn oci_layout_selects_host_platform_and_imports_blobs() {
    let dir = tempfile::tempdir().unwrap();
    let (mine, _) = build_layout(dir.path());
    let sdir = tempfile::tempdir().unwrap();
    let store = BlobStore::new(sdir.path()).unwrap();
    for name in [None, Some("latest"), Some("example.com/team/app:latest")] {
        let img = open_oci_layout(dir.path(), name, &Platform::host(), &store).unwrap();
        assert_eq!(img.manifest_digest, mine.manifest_digest());
        assert_eq!(
            img.reference.as_ref().map(ToString::to_string).as_deref(),
            Some("example.com/team/app:latest")
        );
        assert!(matches!(img.source, ImageSource::OciLayout(_)));
    }
    for l in &mine.layers {
        assert!(store.contains(&Digest::sha256_of(l)));
    }
    let err = open_oci_layout(dir.path(), Some("nope"), &Platform::host(), &store).unwrap_err();
    assert!(
        err.to_string().contains("\"nope\"") && err.to_string().contains("latest"),
        "{err}"
    );
    let err = open_oci_layout(
        dir.path(),
        None,
        &Platform::parse("linux/s390x").unwrap(),
        &store,
    )
    .unwrap_err();
    assert!(matches!(err, Error::NoMatchingPlatform { .. }), "{err}");
}

#[test]
fn oci_layout_detects_corrupt_blob() {
    let dir = tempfile::tempdir().unwrap();
    let (mine, _) = build_layout(dir.path());
    let layer = Digest::sha256_of(&mine.layers[0]);
    std::fs::write(
        dir.path().join("blobs/sha256").join(layer.hex()),
        vec![0u8; 1000],
    )
    .unwrap();
    let sdir = tempfile::tempdir().unwrap();
    let store = BlobStore::new(sdir.path()).unwrap();
    let err = open_oci_layout(dir.path(), None, &Platform::host(), &store).unwrap_err();
    assert!(matches!(err, Error::BlobDigestMismatch { .. }), "{err}");
    assert!(!store.contains(&layer));
}

#[test]
fn oci_archive_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let (mine, _) = build_layout(dir.path());
    let out = tempfile::tempdir().unwrap();
    let tar_path = out.path().join("image.tar");
    tar_dir(dir.path(), &tar_path);
    let sdir = tempfile::tempdir().unwrap();
    let store = BlobStore::new(sdir.path()).unwrap();
    let img = open_oci_archive(&tar_path, None, &Platform::host(), &store).unwrap();
    assert_eq!(img.manifest_digest, mine.manifest_digest());
    for l in img.layers() {
        assert!(store.contains_sized(&l.digest, l.size));
    }
    let by_digest = open_oci_archive(
        &tar_path,
        Some(&mine.manifest_digest().to_string()),
        &Platform::host(),
        &store,
    )
    .unwrap();
    assert_eq!(by_digest.manifest_digest, mine.manifest_digest());
    // Not an OCI archive.
    let bogus = out.path().join("bogus.tar");
    std::fs::write(&bogus, b"not a tar at all").unwrap();
    assert!(open_oci_archive(&bogus, None, &Platform::host(), &store).is_err());
}

/// The blob store is shared by owners: an archive that names a layer without bringing it is
/// refused even when the store already holds that layer (someone else's), whatever its media
/// type says.
#[test]
fn an_oci_archive_must_bring_its_own_layers() {
    let dir = tempfile::tempdir().unwrap();
    let (mine, _) = build_layout(dir.path());
    let sdir = tempfile::tempdir().unwrap();
    let store = BlobStore::new(sdir.path()).unwrap();
    // Another owner's build left the layer in the store.
    let layer = Digest::sha256_of(&mine.layers[0]);
    store
        .import(&mine.layers[0][..], &layer, mine.layers[0].len() as u64)
        .unwrap();
    std::fs::remove_file(dir.path().join("blobs/sha256").join(layer.hex())).unwrap();
    let out = tempfile::tempdir().unwrap();
    let tar_path = out.path().join("image.tar");
    tar_dir(dir.path(), &tar_path);
    let err = open_oci_archive(&tar_path, None, &Platform::host(), &store).unwrap_err();
    assert!(
        matches!(err, Error::InvalidLocalImage { .. })
            && err.to_string().contains(&format!("{layer} is missing")),
        "{err}"
    );
}

#[test]
fn docker_archive_synthesises_manifest() {
    let host = Platform::host();
    let img = TestImage::new(&host, json!({}), &[700, 900]);
    let stage = tempfile::tempdir().unwrap();
    let cfg_name = format!("{}.json", Digest::sha256_of(&img.config).hex());
    std::fs::write(stage.path().join(&cfg_name), &img.config).unwrap();
    let mut layer_names = vec![];
    for (i, l) in img.layers.iter().enumerate() {
        let d = stage.path().join(format!("layer{i}"));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("layer.tar"), l).unwrap();
        layer_names.push(format!("layer{i}/layer.tar"));
    }
    std::fs::write(
        stage.path().join("manifest.json"),
        serde_json::to_vec(
            &json!([{"Config": cfg_name, "RepoTags": ["myapp:1.0"], "Layers": layer_names}]),
        )
        .unwrap(),
    )
    .unwrap();
    let out = tempfile::tempdir().unwrap();
    let tar_path = out.path().join("save.tar");
    tar_dir(stage.path(), &tar_path);
    let sdir = tempfile::tempdir().unwrap();
    let store = BlobStore::new(sdir.path()).unwrap();
    for tag in [None, Some("myapp:1.0"), Some("docker.io/library/myapp:1.0")] {
        let got = open_docker_archive(&tar_path, tag, &host, &store).unwrap();
        assert_eq!(got.layers().len(), 2);
        assert_eq!(got.layers()[0].digest, Digest::sha256_of(&img.layers[0]));
        assert_eq!(
            got.layers()[0].media_type,
            "application/vnd.oci.image.layer.v1.tar"
        );
        assert_eq!(got.manifest_digest, Digest::sha256_of(&got.manifest_raw));
        assert_eq!(
            got.reference.as_ref().map(ToString::to_string).as_deref(),
            Some("docker.io/library/myapp:1.0")
        );
        assert!(store.contains(&got.layers()[1].digest));
    }
    let err = open_docker_archive(&tar_path, Some("other:2"), &host, &store).unwrap_err();
    assert!(err.to_string().contains("myapp:1.0"), "{err}");
}

#[test]
fn devenv_fixture_layouts() {
    let base = std::env::var("NULLSPACE_FIXTURE_BASE_LAYOUT").expect(
        "NULLSPACE_FIXTURE_BASE_LAYOUT is unset: run the tests with scripts/test (or export `scripts/devenv up`)",
    );
    let sdir = tempfile::tempdir().unwrap();
    let store = BlobStore::new(sdir.path()).unwrap();
    let img = open_oci_layout(Path::new(&base), None, &Platform::host(), &store).unwrap();
    assert!(!img.layers().is_empty());
    assert_eq!(img.config.os, "linux");
    if let Ok(multi) = std::env::var("NULLSPACE_FIXTURE_MULTILAYER_LAYOUT") {
        let img = open_oci_layout(Path::new(&multi), None, &Platform::host(), &store).unwrap();
        assert!(img.layers().len() > 1);
    }
}
