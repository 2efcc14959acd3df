//! Rejected inputs and their messages.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{fsck, meta};
use nullspace_ext4::{Error, Metadata, Options, Writer};

fn writer() -> (tempfile::TempDir, std::path::PathBuf, Writer) {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("img");
    let w = Writer::create(std::fs::File::create(&img).unwrap(), Options::default()).unwrap();
    (dir, img, w)
}

#[test]
fn bad_names() {
    let (_d, _img, mut w) = writer();
    let root = w.root();
    let long = vec![b'a'; 256];
    for (name, want) in [
        (&b""[..], "empty"),
        (&long[..], "over 255 bytes"),
        (b"a/b", "contains '/'"),
        (b"a\0b", "contains NUL"),
        (b".", "reserved"),
        (b"..", "reserved"),
    ] {
        let e = w.create_dir(root, name, meta(0o755, 0, 0)).unwrap_err();
        assert!(matches!(e, Error::InvalidName { .. }), "{e}");
        assert!(e.to_string().contains(want), "{e}");
    }
    assert!(w
        .create_dir(root, &vec![b'a'; 255], meta(0o755, 0, 0))
        .is_ok());
}

#[test]
fn existing_names_and_parents() {
    let (_d, img, mut w) = writer();
    let root = w.root();
    let d = w.create_dir(root, b"d", meta(0o755, 0, 0)).unwrap();
    let e = w.create_dir(root, b"d", meta(0o755, 0, 0)).unwrap_err();
    assert_eq!(e.to_string(), "/d already exists");
    let e = w
        .create_dir(root, b"lost+found", Metadata::default())
        .unwrap_err();
    assert!(matches!(e, Error::AlreadyExists { .. }));
    let data = w.write_data(&mut &b"x"[..], 1).unwrap();
    let f = w.create_file(d, b"f", meta(0o644, 0, 0), data).unwrap();
    let e = w.create_dir(f, b"x", meta(0o755, 0, 0)).unwrap_err();
    assert_eq!(e.to_string(), "/d/f is not a directory");
    let e = w.link(root, b"d2", d).unwrap_err();
    assert!(matches!(e, Error::LinkToDirectory { .. }), "{e}");
    let e = w.remove(root, b"nope").unwrap_err();
    assert_eq!(e.to_string(), "/nope does not exist");
    // A removed directory can no longer take children.
    w.remove(root, b"d").unwrap();
    let e = w.create_dir(d, b"x", meta(0o755, 0, 0)).unwrap_err();
    assert!(matches!(e, Error::Removed { .. }), "{e}");
    // The image stays consistent after all these errors; data of a failed create is released.
    let data = w.write_data(&mut &b"y"[..], 1).unwrap();
    assert!(w
        .create_file(root, b"lost+found", meta(0o644, 0, 0), data)
        .is_err());
    w.finish().unwrap();
    fsck(&img);
}

#[test]
fn symlink_targets() {
    let (_d, img, mut w) = writer();
    let root = w.root();
    for (target, want) in [
        (vec![], "empty"),
        (vec![b'a'; 4096], "over 4095"),
        (b"a\0b".to_vec(), "NUL"),
    ] {
        let e = w
            .create_symlink(root, b"l", meta(0o777, 0, 0), &target)
            .unwrap_err();
        assert!(e.to_string().contains(want), "{e}");
    }
    w.create_symlink(root, b"l", meta(0o777, 0, 0), &vec![b'a'; 4095])
        .unwrap();
    w.finish().unwrap();
    fsck(&img);
}

#[test]
fn xattr_limits() {
    let (_d, img, mut w) = writer();
    let root = w.root();
    let mut m = meta(0o644, 0, 0);
    m.xattrs = vec![(b"user.big".to_vec(), vec![1u8; 4041])];
    let e = w.create_dir(root, b"d", m.clone()).unwrap_err();
    assert!(matches!(e, Error::XattrTooBig { .. }), "{e}");
    assert!(e.to_string().contains("/d"), "{e}");
    m.xattrs = vec![(b"other.x".to_vec(), vec![])];
    let e = w.create_dir(root, b"d", m.clone()).unwrap_err();
    assert!(e.to_string().contains("unsupported namespace"), "{e}");
    m.xattrs = vec![(b"user.".to_vec(), vec![])];
    assert!(w.create_dir(root, b"d", m.clone()).is_err());
    m.xattrs = vec![(b"system.posix_acl_access".to_vec(), vec![1, 2, 3])];
    assert!(w.create_dir(root, b"d", m.clone()).is_err());
    m.xattrs = vec![(b"user.a".to_vec(), vec![1]), (b"user.a".to_vec(), vec![2])];
    assert!(w.create_dir(root, b"d", m.clone()).is_err());
    // Largest single value that fits a block.
    m.xattrs = vec![(b"user.big".to_vec(), vec![1u8; 4040])];
    w.create_dir(root, b"d", m).unwrap();
    w.finish().unwrap();
    fsck(&img);
}

#[test]
fn link_count_limit() {
    let (_d, img, mut w) = writer();
    let root = w.root();
    let data = w.write_data(&mut &b""[..], 0).unwrap();
    let f = w.create_file(root, b"f", meta(0o644, 0, 0), data).unwrap();
    let d = w.create_dir(root, b"links", meta(0o755, 0, 0)).unwrap();
    for i in 1..65000u32 {
        w.link(d, format!("{i}").as_bytes(), f).unwrap();
    }
    let e = w.link(d, b"one-too-many", f).unwrap_err();
    assert!(e.to_string().contains("65000"), "{e}");
    w.finish().unwrap();
    fsck(&img);
}

#[test]
fn many_subdirectories_use_dir_nlink() {
    let (_d, img, mut w) = writer();
    let root = w.root();
    let d = w.create_dir(root, b"d", meta(0o755, 0, 0)).unwrap();
    for i in 0..65001u32 {
        w.create_dir(d, format!("{i}").as_bytes(), meta(0o755, 0, 0))
            .unwrap();
    }
    w.finish().unwrap();
    fsck(&img);
    let stat = common::debugfs_text(&img, "stat /d");
    assert!(stat.contains("Links: 1"), "{stat}");
}

#[test]
fn short_reader_is_an_error() {
    let (_d, img, mut w) = writer();
    let e = w.write_data(&mut &b"abc"[..], 10).unwrap_err();
    assert_eq!(
        e.to_string(),
        "file data ended early: expected 10 bytes, got 3"
    );
    w.finish().unwrap();
    fsck(&img);
}
