//! Big directories, big files, determinism.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Read;

use common::{debugfs, debugfs_text, fsck, meta};
use nullspace_ext4::{Options, Writer};
use sha2::{Digest, Sha256};

/// Zeros, or a cheap pattern with a zero block every so often.
struct Pattern {
    left: u64,
    zeros: bool,
}

impl Read for Pattern {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.left as usize);
        if self.zeros {
            buf[..n].fill(0);
        } else {
            for (i, b) in buf[..n].iter_mut().enumerate() {
                *b = (i % 251) as u8;
            }
        }
        self.left -= n as u64;
        Ok(n)
    }
}

#[test]
fn directory_with_100k_entries() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("img");
    let mut w = Writer::create(std::fs::File::create(&img).unwrap(), Options::default()).unwrap();
    let big = w.create_dir(w.root(), b"big", meta(0o755, 0, 0)).unwrap();
    let long = w.create_dir(w.root(), b"long", meta(0o755, 0, 0)).unwrap();
    for i in 0..100_000u32 {
        let data = w.write_data(&mut &b""[..], 0).unwrap();
        w.create_file(
            big,
            format!("file-{i:06}").as_bytes(),
            meta(0o644, 0, 0),
            data,
        )
        .unwrap();
    }
    // 255-byte names: 15 per block, so this needs a second index level.
    for i in 0..8_000u32 {
        let name = format!("{i:0255}");
        w.create_symlink(long, name.as_bytes(), meta(0o777, 0, 0), b"t")
            .unwrap();
    }
    w.finish().unwrap();
    fsck(&img);
    for i in [0u32, 1, 4242, 77_777, 99_999] {
        let stat = debugfs_text(&img, &format!("stat /big/file-{i:06}"));
        assert!(stat.contains("Type: regular"), "file-{i:06}: {stat}");
    }
    let stat = debugfs_text(&img, &format!("stat /long/{:0255}", 7_999));
    assert!(stat.contains("Fast link dest: \"t\""), "{stat}");
    let htree = debugfs_text(&img, "htree_dump /long");
    assert!(
        htree.contains("Indirect levels: 1"),
        "{}",
        &htree[..500.min(htree.len())]
    );
}

fn build_same(path: &std::path::Path) {
    let mut w = Writer::create(std::fs::File::create(path).unwrap(), Options::default()).unwrap();
    let root = w.root();
    for d in 0..20u32 {
        let dir = w
            .create_dir(root, format!("d{d}").as_bytes(), meta(0o750, d, d))
            .unwrap();
        for f in 0..50u32 {
            let size = u64::from(f) * 1013;
            let data = w
                .write_data(
                    &mut Pattern {
                        left: size,
                        zeros: false,
                    },
                    size,
                )
                .unwrap();
            w.create_file(dir, format!("f{f}").as_bytes(), meta(0o640, 1, 2), data)
                .unwrap();
        }
    }
    w.remove(root, b"d3").unwrap();
    w.finish().unwrap();
}

#[test]
fn same_input_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    let b = dir.path().join("b");
    build_same(&a);
    build_same(&b);
    let ha = Sha256::digest(std::fs::read(&a).unwrap());
    let hb = Sha256::digest(std::fs::read(&b).unwrap());
    assert_eq!(ha, hb);
    fsck(&a);
}

fn big_file(size: u64) {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("img");
    let mut w = Writer::create(std::fs::File::create(&img).unwrap(), Options::default()).unwrap();
    let data = w
        .write_data(
            &mut Pattern {
                left: size,
                zeros: true,
            },
            size,
        )
        .unwrap();
    w.create_file(w.root(), b"big", meta(0o644, 0, 0), data)
        .unwrap();
    let tail = b"the end";
    let data = w.write_data(&mut &tail[..], tail.len() as u64).unwrap();
    w.create_file(w.root(), b"tail", meta(0o644, 0, 0), data)
        .unwrap();
    w.finish().unwrap();
    fsck(&img);
    let stat = debugfs_text(&img, "stat /big");
    assert!(stat.contains(&format!("Size: {size}")), "{stat}");
    let ex = debugfs_text(&img, "ex /big");
    assert!(ex.contains("Level Entries"), "{ex}");
    assert_eq!(debugfs(&img, "cat /tail"), tail);
}

#[test]
fn file_with_extent_index() {
    // 5 extents of 32768 blocks (and a few more from group boundaries): needs a tree block.
    big_file(5 * 128 * 1024 * 1024 + 12345);
}

#[test]
#[ignore = "64 GiB sparse image; slow e2fsck"]
fn file_of_64_gib() {
    big_file(64 << 30);
}
