//! Hostile layers against the import bounds: each is refused with the layer, the entry and the
//! rule, before the tar parser holds an oversized record or the stream is read to its end.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use nullspace_rootfs::rules::Rule;
use nullspace_rootfs::{
    build_rootfs, ImportLimits, LayerInput, NoProgress, RootfsError, RootfsOptions,
};

const GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// A ustar header block for `name` with raw type flag and size.
fn header(name: &str, kind: u8, size: u64) -> [u8; 512] {
    let mut h = tar::Header::new_ustar();
    h.set_path(name).unwrap();
    h.set_entry_type(tar::EntryType::new(kind));
    h.set_size(size);
    h.set_mode(0o644);
    h.set_cksum();
    *h.as_bytes()
}

/// Gzips what `write` produces, streaming (the raw stream may be gigabytes of zeros).
fn gzip_blob(dir: &std::path::Path, write: impl FnOnce(&mut dyn Write)) -> LayerInput {
    let path = dir.join("layer.tar.gz");
    let file = std::fs::File::create(&path).unwrap();
    let mut encoder = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
    write(&mut encoder);
    encoder.finish().unwrap();
    LayerInput {
        digest: "sha256:hostile".into(),
        media_type: GZIP.into(),
        diff_id: None,
        size: std::fs::metadata(&path).unwrap().len(),
        path,
    }
}

fn zeros(out: &mut dyn Write, mut bytes: u64) {
    let block = vec![0u8; 1 << 20];
    while bytes > 0 {
        let n = bytes.min(block.len() as u64) as usize;
        out.write_all(&block[..n]).unwrap();
        bytes -= n as u64;
    }
}

fn import(layer: LayerInput, options: RootfsOptions) -> RootfsError {
    let out = tempfile::tempdir().unwrap();
    build_rootfs(
        &[layer],
        &out.path().join("rootfs.ext4"),
        &options,
        &NoProgress,
    )
    .expect_err("the hostile layer was accepted")
}

fn rule_of(error: &RootfsError) -> (&str, &Rule) {
    match error {
        RootfsError::Rejected { entry, rule, layer } => {
            assert_eq!(layer, "sha256:hostile");
            (entry.as_str(), rule)
        }
        other => panic!("expected a rejection, got: {other}"),
    }
}

#[test]
fn a_multi_gigabyte_pax_record_or_long_name_is_refused_from_its_header() {
    for (kind, name) in [(b'x', "PaxHeaders/big"), (b'L', "long-name-record")] {
        let dir = tempfile::tempdir().unwrap();
        // The header declares 4 GiB; only 2 MiB follow. The tar crate would buffer it all.
        let layer = gzip_blob(dir.path(), |out| {
            out.write_all(&header(name, kind, 4 << 30)).unwrap();
            zeros(out, 2 << 20);
        });
        let error = import(layer, RootfsOptions::default());
        let (entry, rule) = rule_of(&error);
        assert_eq!(entry, name);
        assert!(
            matches!(rule, Rule::MetadataRecordTooLarge { size, .. } if *size == 4 << 30),
            "{error}"
        );
        assert!(error.to_string().contains("over the limit"), "{error}");
    }
}

#[test]
fn a_decompression_bomb_after_the_end_of_the_archive_is_not_read_to_its_end() {
    let dir = tempfile::tempdir().unwrap();
    // A valid one-file archive followed by 2 GiB of zeros (a few MiB compressed).
    let layer = gzip_blob(dir.path(), |out| {
        out.write_all(&header("hello", b'0', 5)).unwrap();
        let mut data = [0u8; 512];
        data[..5].copy_from_slice(b"hello");
        out.write_all(&data).unwrap();
        zeros(out, 2 << 30);
    });
    let error = import(layer, RootfsOptions::default());
    let (entry, rule) = rule_of(&error);
    assert_eq!(entry, "hello");
    assert_eq!(*rule, Rule::TrailingData(1 << 20), "{error}");
}

#[test]
fn real_sparse_entries_and_broken_headers_name_the_entry_and_the_rule() {
    let dir = tempfile::tempdir().unwrap();
    // A GNU sparse file of 1 MiB with one 512-byte chunk at 4096, as GNU tar writes it.
    let layer = gzip_blob(dir.path(), |out| {
        let mut h = tar::Header::new_gnu();
        h.set_path("var/holes.bin").unwrap();
        h.set_entry_type(tar::EntryType::GNUSparse);
        h.set_size(512);
        h.set_mode(0o644);
        let gnu = h.as_gnu_mut().unwrap();
        gnu.sparse[0].offset = *b"00000010000\0";
        gnu.sparse[0].numbytes = *b"00000001000\0";
        gnu.realsize = *b"00004000000\0";
        h.set_cksum();
        out.write_all(h.as_bytes()).unwrap();
        out.write_all(&[7u8; 512]).unwrap();
        zeros(out, 1024);
    });
    let error = import(layer, RootfsOptions::default());
    assert_eq!(rule_of(&error), ("var/holes.bin", &Rule::SparseEntry));
    assert!(!error.to_string().contains("unreadable layer"), "{error}");

    let layer = gzip_blob(dir.path(), |out| {
        let mut h = header("etc/shadow", b'0', 0);
        h[148] = b'9'; // the checksum field is no longer octal
        out.write_all(&h).unwrap();
        zeros(out, 1024);
    });
    let error = import(layer, RootfsOptions::default());
    assert_eq!(
        rule_of(&error),
        ("etc/shadow", &Rule::BadHeader("checksum mismatch"))
    );
}

#[test]
fn the_entry_count_and_uncompressed_size_of_an_image_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let layer = gzip_blob(dir.path(), |out| {
        for i in 0..1001 {
            out.write_all(&header(&format!("f{i}"), b'0', 0)).unwrap();
        }
        zeros(out, 1024);
    });
    let limits = ImportLimits {
        max_entries: 1000,
        ..ImportLimits::default()
    };
    let error = import(
        layer.clone(),
        RootfsOptions {
            limits,
            ..RootfsOptions::default()
        },
    );
    assert_eq!(rule_of(&error), ("f1000", &Rule::TooManyEntries(1000)));

    let limits = ImportLimits {
        max_uncompressed_bytes: 100 * 512,
        ..ImportLimits::default()
    };
    let error = import(
        layer,
        RootfsOptions {
            limits,
            ..RootfsOptions::default()
        },
    );
    assert!(
        matches!(rule_of(&error).1, Rule::ImageTooLarge(_)),
        "{error}"
    );
}

#[test]
fn a_stopped_import_ends_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let layer = gzip_blob(dir.path(), |out| {
        out.write_all(&header("big", b'0', 1 << 30)).unwrap();
        zeros(out, 1 << 30);
    });
    let error = import(
        layer,
        RootfsOptions {
            stop: Some(Arc::new(AtomicBool::new(true))),
            ..RootfsOptions::default()
        },
    );
    assert!(matches!(error, RootfsError::Stopped), "{error}");
}
