//! Facts about every entry of a directory tree, to compare our rootfs with an oracle's.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use sha2::{Digest, Sha256};

/// What a user can observe about one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    pub kind: &'static str,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub content: String,
    pub target: String,
    /// mtime (seconds, nanoseconds); directories' are not compared (extraction touches them).
    pub mtime: (i64, i64),
    pub nlink: u64,
    pub xattrs: BTreeMap<String, Vec<u8>>,
    /// Paths (sorted) that share this inode, for hard-link groups.
    pub links: Vec<String>,
}

/// Walks `root` (not following symlinks) and returns facts by relative path.
pub fn facts(root: &Path) -> BTreeMap<String, Facts> {
    let mut out = BTreeMap::new();
    let mut inodes: HashMap<u64, Vec<String>> = HashMap::new();
    walk(root, root, &mut out, &mut inodes);
    for paths in inodes.values() {
        let mut sorted = paths.clone();
        sorted.sort();
        for p in paths {
            if let Some(f) = out.get_mut(p) {
                f.links = sorted.clone();
            }
        }
    }
    out
}

fn walk(
    root: &Path,
    dir: &Path,
    out: &mut BTreeMap<String, Facts>,
    inodes: &mut HashMap<u64, Vec<String>>,
) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let relative = path
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let file_type = meta.file_type();
        let kind = if file_type.is_dir() {
            "dir"
        } else if file_type.is_symlink() {
            "symlink"
        } else if file_type.is_file() {
            "file"
        } else {
            "special"
        };
        let mut xattrs = BTreeMap::new();
        if let Ok(names) = xattr::list(&path) {
            for name in names {
                let name = name.to_string_lossy().into_owned();
                if let Ok(Some(value)) = xattr::get(&path, &name) {
                    xattrs.insert(name, value);
                }
            }
        }
        let content = if kind == "file" {
            let mut hasher = Sha256::new();
            let mut file = std::fs::File::open(&path).unwrap();
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = file.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
            }
            hex::encode(hasher.finalize())
        } else {
            String::new()
        };
        let target = if kind == "symlink" {
            std::fs::read_link(&path)
                .unwrap()
                .to_string_lossy()
                .into_owned()
        } else {
            String::new()
        };
        if kind != "dir" {
            inodes.entry(meta.ino()).or_default().push(relative.clone());
        }
        out.insert(
            relative,
            Facts {
                kind,
                mode: meta.mode() & 0o7777,
                uid: meta.uid(),
                gid: meta.gid(),
                size: if kind == "dir" { 0 } else { meta.size() },
                content,
                target,
                mtime: if kind == "dir" {
                    (0, 0)
                } else {
                    (meta.mtime(), meta.mtime_nsec())
                },
                nlink: if kind == "dir" { 0 } else { meta.nlink() },
                xattrs,
                links: Vec::new(),
            },
        );
        if kind == "dir" {
            walk(root, &path, out, inodes);
        }
    }
}
