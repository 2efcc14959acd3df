//! Helpers shared by the integration tests: e2fsck and debugfs as oracles.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

use nullspace_ext4::{Metadata, Timestamp};

/// Runs `e2fsck -fn` and panics with its output unless it exits 0.
pub fn fsck(img: &Path) {
    let out = Command::new("e2fsck")
        .arg("-fn")
        .arg(img)
        .output()
        .expect("run e2fsck");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    assert!(out.status.success(), "e2fsck failed:\n{text}");
}

/// Runs one debugfs request and returns its stdout.
pub fn debugfs(img: &Path, request: &str) -> Vec<u8> {
    let out = Command::new("debugfs")
        .arg("-R")
        .arg(request)
        .arg(img)
        .output()
        .expect("run debugfs");
    out.stdout
}

/// Runs one debugfs request and returns stdout as text.
pub fn debugfs_text(img: &Path, request: &str) -> String {
    String::from_utf8_lossy(&debugfs(img, request)).into_owned()
}

/// Metadata with a mode, owner and distinct times.
pub fn meta(mode: u32, uid: u32, gid: u32) -> Metadata {
    Metadata {
        mode,
        uid,
        gid,
        atime: Timestamp {
            secs: 1_600_000_000,
            nanos: 1,
        },
        mtime: Timestamp {
            secs: 1_700_000_000,
            nanos: 999_999_999,
        },
        ctime: Timestamp {
            secs: 1_650_000_000,
            nanos: 12345,
        },
        xattrs: Vec::new(),
    }
}
