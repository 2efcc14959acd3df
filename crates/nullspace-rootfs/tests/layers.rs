//! Crafted layers, one per import rule and whiteout rule, applied into a real ext4 image and
//! checked with the e2fsprogs oracles (`e2fsck -fn`, `debugfs`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use nullspace_rootfs::{build_rootfs, LayerInput, NoProgress, RootfsError, RootfsOptions};
use sha2::{Digest, Sha256};

const TAR: &str = "application/vnd.oci.image.layer.v1.tar";
const GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

/// One tar entry, written with raw header bytes so that hostile names survive.
enum E<'a> {
    Dir(&'a str, u32),
    File(&'a str, &'a [u8], u32),
    Owned(&'a str, &'a [u8], u32, u64, u64),
    Symlink(&'a str, &'a str),
    Hard(&'a str, &'a str),
    Typed(&'a str, u8),
    Pax(Vec<(&'a str, &'a [u8])>, Box<E<'a>>),
}

fn header(path: &str, kind: u8, size: u64, mode: u32, uid: u64, gid: u64) -> tar::Header {
    // GNU sparse entries only exist in the GNU header format.
    let mut h = if kind == b'S' {
        tar::Header::new_gnu()
    } else {
        tar::Header::new_ustar()
    };
    h.set_size(size);
    h.set_mode(mode);
    h.set_uid(uid);
    h.set_gid(gid);
    h.set_mtime(1_700_000_000);
    h.set_entry_type(tar::EntryType::new(kind));
    let bytes = h.as_mut_bytes();
    let name = path.as_bytes();
    assert!(name.len() <= 100, "use Pax for long names");
    bytes[..100].fill(0);
    bytes[..name.len()].copy_from_slice(name);
    h
}

fn set_link(h: &mut tar::Header, target: &str) {
    let bytes = h.as_mut_bytes();
    bytes[157..257].fill(0);
    bytes[157..157 + target.len()].copy_from_slice(target.as_bytes());
}

fn append(builder: &mut tar::Builder<Vec<u8>>, entry: &E) {
    match entry {
        E::Dir(p, mode) => {
            let mut h = header(p, b'5', 0, *mode, 0, 0);
            h.set_cksum();
            builder.append(&h, &[][..]).unwrap();
        }
        E::File(p, data, mode) => append(builder, &E::Owned(p, data, *mode, 0, 0)),
        E::Owned(p, data, mode, uid, gid) => {
            let mut h = header(p, b'0', data.len() as u64, *mode, *uid, *gid);
            h.set_cksum();
            builder.append(&h, *data).unwrap();
        }
        E::Symlink(p, target) => {
            let mut h = header(p, b'2', 0, 0o777, 0, 0);
            set_link(&mut h, target);
            h.set_cksum();
            builder.append(&h, &[][..]).unwrap();
        }
        E::Hard(p, target) => {
            let mut h = header(p, b'1', 0, 0o644, 0, 0);
            set_link(&mut h, target);
            h.set_cksum();
            builder.append(&h, &[][..]).unwrap();
        }
        E::Typed(p, kind) => {
            let mut h = header(p, *kind, 0, 0o644, 0, 0);
            if *kind == b'S' {
                // A well-formed GNU sparse header: no chunks, real size 0.
                h.as_mut_bytes()[483..495].copy_from_slice(b"00000000000\0");
            }
            h.set_cksum();
            builder.append(&h, &[][..]).unwrap();
        }
        E::Pax(records, inner) => {
            builder
                .append_pax_extensions(records.iter().map(|(k, v)| (*k, *v)))
                .unwrap();
            append(builder, inner);
        }
    }
}

fn tar_of(entries: &[E]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries {
        append(&mut builder, entry);
    }
    builder.into_inner().unwrap()
}

fn compress(media_type: &str, raw: &[u8]) -> Vec<u8> {
    match media_type {
        GZIP => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(raw).unwrap();
            e.finish().unwrap()
        }
        ZSTD => zstd::encode_all(raw, 3).unwrap(),
        _ => raw.to_vec(),
    }
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

struct Built {
    _dir: tempfile::TempDir,
    image: PathBuf,
}

/// Writes each layer (media type, raw tar) as a blob and builds the rootfs from them.
fn build_layers(layers: Vec<(&str, Vec<u8>)>) -> Result<Built, RootfsError> {
    let dir = tempfile::tempdir().unwrap();
    let mut inputs = Vec::new();
    for (i, (media_type, raw)) in layers.into_iter().enumerate() {
        let blob = compress(media_type, &raw);
        let path = dir.path().join(format!("layer{i}"));
        std::fs::write(&path, &blob).unwrap();
        inputs.push(LayerInput {
            digest: sha256(&blob),
            media_type: media_type.to_string(),
            diff_id: Some(sha256(&raw)),
            path,
            size: blob.len() as u64,
        });
    }
    let image = dir.path().join("rootfs.ext4");
    build_rootfs(&inputs, &image, &RootfsOptions::default(), &NoProgress)?;
    fsck(&image);
    Ok(Built { _dir: dir, image })
}

fn build(layers: Vec<Vec<E>>) -> Built {
    build_layers(layers.iter().map(|l| (GZIP, tar_of(l))).collect())
        .unwrap_or_else(|e| panic!("build failed: {e}"))
}

fn rejected(layers: Vec<Vec<E>>) -> String {
    match build_layers(layers.iter().map(|l| (TAR, tar_of(l))).collect()) {
        Ok(_) => panic!("the layer was accepted"),
        Err(e) => e.to_string(),
    }
}

fn fsck(image: &Path) {
    let out = Command::new("e2fsck")
        .arg("-fn")
        .arg(image)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "e2fsck -fn found problems:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn debugfs(image: &Path, request: &str) -> String {
    let out = Command::new("debugfs")
        .arg("-R")
        .arg(request)
        .arg(image)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn names(image: &Path, dir: &str) -> Vec<String> {
    let mut names: Vec<String> = debugfs(image, &format!("ls -p {dir}"))
        .lines()
        .filter_map(|l| l.split('/').nth(5).map(str::to_string))
        .filter(|n| !n.is_empty() && n != "." && n != "..")
        .collect();
    names.sort();
    names
}

fn cat(image: &Path, path: &str) -> Vec<u8> {
    let out = Command::new("debugfs")
        .arg("-R")
        .arg(format!("cat {path}"))
        .arg(image)
        .output()
        .unwrap();
    out.stdout
}

fn stat(image: &Path, path: &str) -> String {
    debugfs(image, &format!("stat {path}"))
}

fn exists(image: &Path, path: &str) -> bool {
    !stat(image, path).is_empty()
}

#[test]
fn files_dirs_symlinks_and_hard_links_keep_their_metadata() {
    let built = build(vec![vec![
        E::Dir("usr/", 0o755),
        E::Dir("usr/bin/", 0o755),
        E::Owned("usr/bin/sudo", b"#!/bin/sh\n", 0o4755, 0, 0),
        E::Owned("usr/bin/tool", b"tool", 0o2711, 1000, 70000),
        E::Dir("tmp2/", 0o1777),
        E::Symlink("usr/bin/link", "sudo"),
        E::Hard("usr/bin/sudo-again", "usr/bin/sudo"),
        E::Hard("usr/bin/link-again", "usr/bin/link"),
    ]]);
    let img = &built.image;
    assert_eq!(cat(img, "/usr/bin/sudo"), b"#!/bin/sh\n");
    let sudo = stat(img, "/usr/bin/sudo");
    assert!(sudo.contains("Mode:  04755"), "{sudo}");
    assert!(sudo.contains("Links: 2"), "{sudo}");
    let tool = stat(img, "/usr/bin/tool");
    assert!(tool.contains("Mode:  02711"), "{tool}");
    assert!(
        tool.contains("User:  1000") && tool.contains("Group: 70000"),
        "{tool}"
    );
    assert!(stat(img, "/tmp2").contains("Mode:  01777"));
    let link = stat(img, "/usr/bin/link");
    assert!(
        link.contains("Type: symlink") && link.contains("Links: 2"),
        "{link}"
    );
    assert!(link.contains("Fast link dest: \"sudo\""), "{link}");
    for mount_point in [
        "/dev", "/dev/pts", "/dev/shm", "/proc", "/sys", "/run", "/tmp",
    ] {
        assert!(exists(img, mount_point), "{mount_point} missing");
    }
    assert!(stat(img, "/tmp").contains("Mode:  01777"));
}

#[test]
fn a_later_layer_replaces_an_earlier_file() {
    let built = build(vec![
        vec![E::File("etc/motd", b"one", 0o644)],
        vec![E::File("etc/motd", b"second version", 0o600)],
    ]);
    assert_eq!(cat(&built.image, "/etc/motd"), b"second version");
    assert!(stat(&built.image, "/etc/motd").contains("Mode:  0600"));
}

#[test]
fn whiteouts_hide_files_and_directories_from_lower_layers() {
    let built = build(vec![
        vec![
            E::File("a/keep", b"k", 0o644),
            E::File("a/gone", b"g", 0o644),
            E::File("d/x", b"x", 0o644),
            E::File("d/sub/y", b"y", 0o644),
        ],
        vec![
            E::File("a/.wh.gone", b"", 0o644),
            E::File(".wh.d", b"", 0o644),
        ],
    ]);
    assert_eq!(names(&built.image, "/a"), ["keep"]);
    assert!(!exists(&built.image, "/d"));
    assert!(!exists(&built.image, "/a/.wh.gone"));
}

#[test]
fn a_whiteout_spares_what_its_own_layer_adds() {
    let built = build(vec![
        vec![E::File("d/x", b"lower", 0o644)],
        vec![
            E::File("d/x", b"upper", 0o644),
            E::File("d/.wh.x", b"", 0o644),
        ],
    ]);
    assert_eq!(cat(&built.image, "/d/x"), b"upper");
}

#[test]
fn an_opaque_directory_hides_lower_entries_wherever_the_marker_is() {
    for marker_first in [true, false] {
        let mut upper = vec![
            E::Dir("d/", 0o755),
            E::File("d/new", b"n", 0o644),
            E::File("d/sub/added", b"a", 0o644),
        ];
        let marker = E::File("d/.wh..wh..opq", b"", 0o644);
        if marker_first {
            upper.insert(1, marker);
        } else {
            upper.push(marker);
        }
        let built = build(vec![
            vec![
                E::File("d/old", b"o", 0o644),
                E::File("d/sub/lower", b"l", 0o644),
                E::File("other/kept", b"k", 0o644),
            ],
            upper,
        ]);
        assert_eq!(
            names(&built.image, "/d"),
            ["new", "sub"],
            "marker_first={marker_first}"
        );
        assert_eq!(names(&built.image, "/d/sub"), ["added"]);
        assert_eq!(names(&built.image, "/other"), ["kept"]);
    }
}

#[test]
fn directory_over_directory_merges_metadata_and_keeps_children() {
    let built = build(vec![
        vec![E::Dir("d/", 0o755), E::File("d/f", b"f", 0o644)],
        vec![E::Dir("d/", 0o700)],
    ]);
    assert!(stat(&built.image, "/d").contains("Mode:  0700"));
    assert_eq!(cat(&built.image, "/d/f"), b"f");
}

#[test]
fn a_file_replaces_a_directory_and_a_directory_replaces_a_file() {
    let built = build(vec![
        vec![E::File("d/f", b"f", 0o644), E::File("g", b"g", 0o644)],
        vec![
            E::File("d", b"now a file", 0o644),
            E::Dir("g/", 0o755),
            E::File("g/inside", b"i", 0o644),
        ],
    ]);
    assert_eq!(cat(&built.image, "/d"), b"now a file");
    assert_eq!(cat(&built.image, "/g/inside"), b"i");
}

#[test]
fn symlinks_in_parent_paths_resolve_inside_the_rootfs() {
    let built = build(vec![
        vec![
            E::Dir("etc/", 0o755),
            E::Symlink("abs", "/etc"),
            E::Dir("a/", 0o755),
            E::Dir("a/b/", 0o755),
            E::Symlink("a/b/up", "../../../../.."),
        ],
        vec![
            E::File("abs/passwd", b"inside", 0o644),
            E::File("a/b/up/escaped", b"clamped at root", 0o644),
        ],
    ]);
    assert_eq!(cat(&built.image, "/etc/passwd"), b"inside");
    assert_eq!(cat(&built.image, "/escaped"), b"clamped at root");
    assert!(stat(&built.image, "/abs").contains("Type: symlink"));
}

#[test]
fn an_entry_below_a_file_is_rejected() {
    let error = rejected(vec![vec![
        E::File("f", b"", 0o644),
        E::File("f/inside", b"", 0o644),
    ]]);
    assert!(error.contains("parent \"f\" is not a directory"), "{error}");
}

#[test]
fn symlink_loops_in_parent_paths_are_rejected() {
    let error = rejected(vec![vec![
        E::Symlink("a", "b"),
        E::Symlink("b", "a"),
        E::File("a/x", b"", 0o644),
    ]]);
    assert!(
        error.contains("too many levels of symbolic links"),
        "{error}"
    );
    assert!(error.contains("\"a/x\""), "{error}");
}

#[test]
fn paths_climbing_out_are_rejected_with_layer_entry_and_rule() {
    let error = rejected(vec![vec![E::File("../../etc/shadow", b"x", 0o644)]]);
    assert!(error.contains("climbs out of the rootfs"), "{error}");
    assert!(error.contains("\"../../etc/shadow\""), "{error}");
    assert!(error.contains("layer sha256:"), "{error}");
}

#[test]
fn hard_links_must_stay_inside_and_point_at_existing_non_directories() {
    let error = rejected(vec![vec![E::Hard("x", "../../../etc/passwd")]]);
    assert!(error.contains("hard link target climbs out"), "{error}");
    let error = rejected(vec![vec![E::Hard("x", "missing")]]);
    assert!(error.contains("does not exist"), "{error}");
    let error = rejected(vec![vec![E::Dir("d/", 0o755), E::Hard("x", "d")]]);
    assert!(error.contains("is a directory"), "{error}");
}

#[test]
fn special_files_sparse_and_unknown_entries_are_rejected() {
    for (kind, expected) in [
        (b'3', "character device"),
        (b'4', "block device"),
        (b'6', "FIFO"),
        (b'S', "sparse"),
        (b'Z', "unknown tar entry type 'Z'"),
    ] {
        let error = rejected(vec![vec![E::Typed("dev/thing", kind)]]);
        assert!(error.contains(expected), "{kind}: {error}");
        assert!(error.contains("\"dev/thing\""), "{error}");
    }
    let error = rejected(vec![vec![E::Pax(
        vec![("GNU.sparse.major", b"1"), ("GNU.sparse.minor", b"0")],
        Box::new(E::File("sparse", b"", 0o644)),
    )]]);
    assert!(error.contains("sparse"), "{error}");
}

#[test]
fn pax_long_names_times_ids_and_xattrs_are_read() {
    let long_dir = "d".repeat(120);
    let long_name = "n".repeat(255);
    let path = format!("{long_dir}/{long_name}");
    let capability: &[u8] = &[1, 0, 0, 2, 0, 32, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    let built = build(vec![vec![E::Pax(
        vec![
            ("path", path.as_bytes()),
            ("mtime", b"1700000000.123456789"),
            ("uid", b"3000000"),
            ("gid", b"3000001"),
            ("SCHILY.xattr.security.capability", capability),
            ("SCHILY.xattr.user.note", b"hello"),
        ],
        Box::new(E::File("placeholder", b"long", 0o755)),
    )]]);
    let shown = format!("/{path}");
    assert_eq!(cat(&built.image, &shown), b"long");
    let st = stat(&built.image, &shown);
    assert!(
        st.contains("User: 3000000") && st.contains("Group: 3000001"),
        "{st}"
    );
    let xattrs = debugfs(&built.image, &format!("ea_list {shown}"));
    assert!(
        xattrs.contains("user.note") && xattrs.contains("hello"),
        "{xattrs}"
    );
    assert!(xattrs.contains("security.capability"), "{xattrs}");
    // debugfs prints "mtime: 0x<secs>:<extra> -- ..."; extra holds nanoseconds << 2.
    let mtime_line = st
        .lines()
        .find(|l| l.contains("mtime:"))
        .unwrap()
        .to_string();
    let extra = mtime_line
        .split(':')
        .nth(2)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap();
    let extra = u32::from_str_radix(extra.trim_start_matches("0x"), 16).unwrap();
    assert_eq!(extra >> 2, 123_456_789, "{mtime_line}");
}

#[test]
fn raw_gzip_and_zstd_layers_apply_alike() {
    let built = build_layers(vec![
        (TAR, tar_of(&[E::File("a", b"raw", 0o644)])),
        (GZIP, tar_of(&[E::File("b", b"gzip", 0o644)])),
        (ZSTD, tar_of(&[E::File("c", b"zstd", 0o644)])),
    ])
    .unwrap();
    assert_eq!(cat(&built.image, "/a"), b"raw");
    assert_eq!(cat(&built.image, "/b"), b"gzip");
    assert_eq!(cat(&built.image, "/c"), b"zstd");
}

#[test]
fn unknown_media_types_diff_id_mismatches_and_corrupt_blobs_fail_clearly() {
    let raw = tar_of(&[E::File("a", b"x", 0o644)]);
    let error = build_layers(vec![("application/x-squashfs", raw.clone())])
        .err()
        .unwrap();
    assert!(
        error.to_string().contains("application/x-squashfs"),
        "{error}"
    );

    let dir = tempfile::tempdir().unwrap();
    let blob = dir.path().join("blob");
    std::fs::write(&blob, compress(GZIP, &raw)).unwrap();
    let mismatch = LayerInput {
        digest: "sha256:feed".into(),
        media_type: GZIP.into(),
        diff_id: Some(format!("sha256:{}", "0".repeat(64))),
        path: blob.clone(),
        size: 1,
    };
    let out = dir.path().join("img");
    let error = build_rootfs(&[mismatch], &out, &RootfsOptions::default(), &NoProgress)
        .err()
        .unwrap();
    assert!(error.to_string().contains("diff_id"), "{error}");

    let mut broken = compress(GZIP, &raw);
    let middle = broken.len() / 2;
    broken[middle] ^= 0xff;
    broken.truncate(broken.len() - 4);
    std::fs::write(&blob, &broken).unwrap();
    let corrupt = LayerInput {
        digest: "sha256:bad".into(),
        media_type: GZIP.into(),
        diff_id: None,
        path: blob,
        size: 1,
    };
    let error = build_rootfs(&[corrupt], &out, &RootfsOptions::default(), &NoProgress)
        .err()
        .unwrap();
    assert!(error.to_string().contains("sha256:bad"), "{error}");
}
