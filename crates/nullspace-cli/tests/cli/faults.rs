//! Failures against the real registry leave nothing behind.

use std::io::Write;
use std::path::Path;
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::harness::{devenv, stderr, Cli};

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Writes a one-layer OCI layout whose layer is unique to this call.
fn unique_image(dir: &Path) -> (String, usize) {
    let nonce = format!("{:?} {}", std::time::SystemTime::now(), std::process::id());
    let mut tar = tar::Builder::new(Vec::new());
    let payload = format!("unique payload {nonce}\n").repeat(4096);
    let mut header = tar::Header::new_ustar();
    header.set_size(payload.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append_data(&mut header, "payload.txt", payload.as_bytes())
        .unwrap();
    let raw = tar.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&raw).unwrap();
    let layer = gz.finish().unwrap();
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{}", sha256_hex(&raw))]},
    })
    .to_string();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": format!("sha256:{}", sha256_hex(config.as_bytes())), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": format!("sha256:{}", sha256_hex(&layer)), "size": layer.len()}],
    })
    .to_string();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": format!("sha256:{}", sha256_hex(manifest.as_bytes())),
                       "size": manifest.len(),
                       "annotations": {"org.opencontainers.image.ref.name": "1"}}],
    })
    .to_string();
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    for bytes in [config.as_bytes(), manifest.as_bytes(), &layer[..]] {
        std::fs::write(blobs.join(sha256_hex(bytes)), bytes).unwrap();
    }
    std::fs::write(dir.join("index.json"), index).unwrap();
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    (sha256_hex(&layer), layer.len())
}

#[test]
fn a_corrupted_blob_in_the_registry_fails_the_build_and_publishes_nothing() {
    let env = devenv();
    let work = tempfile::tempdir().unwrap();
    let (layer_hex, layer_size) = unique_image(work.path());
    let repository = format!("nullspace/fault-{}", &layer_hex[..12]);
    let reference = format!("{}/{repository}:1", env["NULLSPACE_REGISTRY"]);
    let status = Command::new("skopeo")
        .args(["copy", "--quiet", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:1", work.path().display()))
        .arg(format!("docker://{reference}"))
        .status()
        .unwrap();
    assert!(status.success(), "skopeo copy failed");

    // Flip bytes of the stored layer, keeping its size: the registry serves it as it is.
    let stored = Path::new(&env["NULLSPACE_DEVENV_DIR"])
        .join("registry/plain/storage/docker/registry/v2/blobs/sha256")
        .join(&layer_hex[..2])
        .join(&layer_hex)
        .join("data");
    let mut bytes = std::fs::read(&stored).unwrap();
    assert_eq!(bytes.len(), layer_size);
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    bytes[middle + 1] ^= 0xff;
    std::fs::write(&stored, &bytes).unwrap();

    let cli = Cli::new();
    let out = cli.run(&[
        "template",
        "build",
        "--from-image",
        &reference,
        "--name",
        "corrupt",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains(&layer_hex), "{}", stderr(&out));
    assert!(
        stderr(&out).to_lowercase().contains("digest"),
        "{}",
        stderr(&out)
    );
    let leftovers: Vec<_> = ["templates", "staging"]
        .iter()
        .flat_map(|d| std::fs::read_dir(cli.data.path().join(d)).unwrap())
        .collect();
    assert!(leftovers.is_empty(), "left behind: {leftovers:?}");
    let in_store = cli.data.path().join("blobs/sha256").join(&layer_hex);
    assert!(!in_store.exists(), "the corrupt blob entered the store");
    let exists = cli.run(&["template", "exists", "corrupt"]);
    assert_eq!(exists.status.code(), Some(3));
}

#[test]
fn an_image_with_special_files_is_rejected_naming_layer_entry_and_rule() {
    let env = devenv();
    let cli = Cli::new();
    let reference = &env["NULLSPACE_FIXTURE_EDGE_SPECIAL_REF"];
    let out = cli.run(&[
        "template",
        "build",
        "--from-image",
        reference,
        "--name",
        "special",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let text = stderr(&out);
    assert!(text.contains("data/special/"), "{text}");
    assert!(text.contains("layer sha256:"), "{text}");
    assert!(text.contains("not supported"), "{text}");
    let staging: Vec<_> = std::fs::read_dir(cli.data.path().join("staging"))
        .unwrap()
        .collect();
    assert!(staging.is_empty());
}

#[test]
fn a_hard_link_to_a_lower_layer_imports() {
    let env = devenv();
    let cli = Cli::new();
    let built = cli.build_json(&[
        "--from-image",
        &env["NULLSPACE_FIXTURE_EDGE_HARDLINK_REF"],
        "--name",
        "hl",
        // Its Cmd is /bin/sh, which this image does not have.
        "--no-start-cmd",
    ]);
    let rootfs = built["rootfs_path"].as_str().unwrap();
    crate::harness::assert_fsck_clean(Path::new(rootfs));
    let out = Command::new("debugfs")
        .args(["-R", "stat /data/link-from-layer2"])
        .arg(rootfs)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Links: 2"), "{text}");
}
