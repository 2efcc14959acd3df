//! Manifest, index and image config bodies as a registry might send them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nullspace_oci::manifest::parse_manifest;
use nullspace_oci::{Digest, ImageConfig};

fuzz_target!(|data: &[u8]| {
    for content_type in [
        None,
        Some("application/vnd.oci.image.manifest.v1+json"),
        Some("application/vnd.oci.image.index.v1+json"),
        Some("application/vnd.docker.distribution.manifest.v2+json"),
        Some("application/vnd.docker.distribution.manifest.list.v2+json"),
    ] {
        let _ = parse_manifest(data, content_type, "fuzz");
    }
    let digest = Digest::sha256_of(data);
    if let Ok(config) = ImageConfig::parse(data, &digest) {
        let _ = nullspace_rootfs::runtime::import_config(data);
        drop(config);
    }
});
