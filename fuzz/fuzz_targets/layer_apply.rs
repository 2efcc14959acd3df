//! A layer (an uncompressed tar stream: entries, whiteouts, PAX and GNU records) applied over a
//! lower layer into a real ext4 image: it must be applied or refused with an error, never
//! panic, hang or grow without bound.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use nullspace_rootfs::{build_rootfs, ImportLimits, LayerInput, NoProgress, RootfsOptions};

const TAR: &str = "application/vnd.oci.image.layer.v1.tar";

/// A lower layer with a directory, a file and a symlink for whiteouts and links to meet.
fn lower_layer() -> &'static [u8] {
    static LOWER: OnceLock<Vec<u8>> = OnceLock::new();
    LOWER.get_or_init(|| {
        let mut builder = tar::Builder::new(Vec::new());
        let mut add = |path: &str, kind: tar::EntryType, data: &[u8], link: Option<&str>| {
            let mut header = tar::Header::new_ustar();
            let _ = header.set_path(path);
            header.set_entry_type(kind);
            header.set_size(data.len() as u64);
            header.set_mode(0o755);
            if let Some(link) = link {
                let _ = header.set_link_name(link);
            }
            header.set_cksum();
            let _ = builder.append(&header, data);
        };
        add("etc/", tar::EntryType::Directory, b"", None);
        add("etc/passwd", tar::EntryType::Regular, b"root:x:0:0::/root:/bin/sh\n", None);
        add("lib", tar::EntryType::Symlink, b"", Some("usr/lib"));
        add("usr/lib/", tar::EntryType::Directory, b"", None);
        builder.into_inner().unwrap_or_default()
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(dir) = tempfile::tempdir() else { return };
    let layer = |name: &str, bytes: &[u8]| -> Option<LayerInput> {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).ok()?;
        Some(LayerInput {
            digest: format!("sha256:{name}"),
            media_type: TAR.into(),
            diff_id: None,
            path,
            size: bytes.len() as u64,
        })
    };
    let (Some(lower), Some(upper)) = (layer("lower", lower_layer()), layer("upper", data)) else {
        return;
    };
    let options = RootfsOptions {
        no_journal: true,
        limits: ImportLimits {
            max_entries: 10_000,
            max_uncompressed_bytes: 64 << 20,
            ..ImportLimits::default()
        },
        ..RootfsOptions::default()
    };
    let _ = build_rootfs(&[lower, upper], &dir.path().join("rootfs.ext4"), &options, &NoProgress);
});
