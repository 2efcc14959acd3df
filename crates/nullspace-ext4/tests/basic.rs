//! Small images checked with e2fsck and debugfs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{debugfs, debugfs_text, fsck, meta};
use nullspace_ext4::{Options, Writer};

#[test]
fn minimal_image_passes_fsck() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("img");
    let w = Writer::create(std::fs::File::create(&img).unwrap(), Options::default()).unwrap();
    let s = w.finish().unwrap();
    assert!(s.size_bytes >= 64 << 20);
    fsck(&img);
}

#[test]
fn small_tree_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("img");
    let mut w = Writer::create(std::fs::File::create(&img).unwrap(), Options::default()).unwrap();
    let root = w.root();
    let etc = w.create_dir(root, b"etc", meta(0o755, 0, 0)).unwrap();
    let body = b"hello world\n";
    let data = w.write_data(&mut &body[..], body.len() as u64).unwrap();
    let f = w
        .create_file(etc, b"hello", meta(0o4755, 70000, 80000), data)
        .unwrap();
    w.link(root, b"hardlink", f).unwrap();
    w.create_symlink(root, b"fast", meta(0o777, 0, 0), b"etc/hello")
        .unwrap();
    let long = vec![b'x'; 300];
    w.create_symlink(root, b"slow", meta(0o777, 0, 0), &long)
        .unwrap();
    w.finish().unwrap();
    fsck(&img);
    assert_eq!(debugfs(&img, "cat /etc/hello"), body);
    let stat = debugfs_text(&img, "stat /hardlink");
    assert!(stat.contains("Links: 2"), "{stat}");
    assert!(stat.contains("User: 70000"), "{stat}");
    assert!(stat.contains("Mode:  04755"), "{stat}");
}
