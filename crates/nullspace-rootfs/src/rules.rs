//! The import rules, each enforced in exactly one place.
//!
//! Every entry of every layer passes through [`normalize_path`] (no path may climb out of the
//! rootfs), [`classify`] (only regular files, directories, symlinks, hard links and whiteouts are
//! imported) and, when it lands below a symlink, [`resolve_parent`] (symlinks in parent paths are
//! followed inside the rootfs, never outside it).

use nullspace_ext4::{NodeId, NodeKind, Writer};

/// A rule an entry can break; the text says what was wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rule {
    /// The path's `..` components climb above the rootfs.
    PathEscapesRoot,
    /// A hard link's target path climbs above the rootfs.
    HardLinkEscapesRoot,
    /// A hard link names a target that does not exist (in this or a lower layer).
    HardLinkTargetMissing(String),
    /// A hard link names a directory.
    HardLinkToDirectory(String),
    /// Sockets, FIFOs, block and character devices are not imported.
    SpecialFile(&'static str),
    /// GNU or PAX sparse entries are not imported.
    SparseEntry,
    /// A tar type flag we do not know.
    UnknownType(u8),
    /// A parent path component is a regular file.
    ParentNotDirectory(String),
    /// Resolving symlinks in the parent path took more than 40 hops.
    SymlinkLoop,
    /// A whiteout with an empty name (`.wh.`), or a whiteout of `.`/`..`.
    InvalidWhiteout,
    /// The entry's path names the rootfs itself but is not a directory.
    RootNotDirectory,
    /// A tar header the parser cannot read (the text says which field).
    BadHeader(&'static str),
    /// A GNU long name/link or PAX record larger than the limit.
    MetadataRecordTooLarge {
        /// The size its header declares.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The image has more entries than the limit.
    TooManyEntries(u64),
    /// The image's layers uncompress to more bytes than the limit.
    ImageTooLarge(u64),
    /// More data than the limit follows a layer's end-of-archive marker.
    TrailingData(u64),
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rule::PathEscapesRoot => write!(f, "path climbs out of the rootfs with '..'"),
            Rule::HardLinkEscapesRoot => {
                write!(f, "hard link target climbs out of the rootfs with '..'")
            }
            Rule::HardLinkTargetMissing(t) => {
                write!(
                    f,
                    "hard link target {t:?} does not exist in this or a lower layer"
                )
            }
            Rule::HardLinkToDirectory(t) => write!(f, "hard link target {t:?} is a directory"),
            Rule::SpecialFile(kind) => write!(f, "{kind} entries are not supported"),
            Rule::SparseEntry => write!(f, "sparse tar entries are not supported"),
            Rule::UnknownType(t) => {
                write!(f, "unknown tar entry type {:?} (0x{t:02x})", char::from(*t))
            }
            Rule::ParentNotDirectory(p) => {
                write!(f, "parent {p:?} is not a directory")
            }
            Rule::SymlinkLoop => write!(f, "too many levels of symbolic links in the parent path"),
            Rule::InvalidWhiteout => write!(f, "whiteout names no file"),
            Rule::RootNotDirectory => write!(f, "the rootfs itself can only be a directory"),
            Rule::BadHeader(what) => write!(f, "unreadable tar header: {what}"),
            Rule::MetadataRecordTooLarge { size, limit } => write!(
                f,
                "long name, long link or PAX record of {size} bytes is over the limit of {limit} bytes"
            ),
            Rule::TooManyEntries(limit) => {
                write!(f, "the image has more than {limit} entries (the limit)")
            }
            Rule::ImageTooLarge(limit) => write!(
                f,
                "the image's layers uncompress to more than {limit} bytes (the limit)"
            ),
            Rule::TrailingData(limit) => write!(
                f,
                "more than {limit} bytes follow the end of the archive (the limit)"
            ),
        }
    }
}

/// Maximum symlinks followed while resolving one parent path, as Linux's `MAXSYMLINKS`.
const MAX_SYMLINK_HOPS: usize = 40;

/// Splits a tar path into clean components: no empty, `.` or `..` components.
///
/// `..` removes the previous component; one that would climb above the root breaks
/// [`Rule::PathEscapesRoot`]. An empty result names the rootfs itself.
pub fn normalize_path(raw: &[u8]) -> Result<Vec<Vec<u8>>, Rule> {
    let mut components: Vec<Vec<u8>> = Vec::new();
    for part in raw.split(|b| *b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                if components.pop().is_none() {
                    return Err(Rule::PathEscapesRoot);
                }
            }
            name => components.push(name.to_vec()),
        }
    }
    Ok(components)
}

/// What an entry is, after the type rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryClass {
    /// A regular file (also the old "contiguous file" type).
    File,
    /// A directory.
    Directory,
    /// A symbolic link.
    Symlink,
    /// A hard link to an earlier entry.
    HardLink,
    /// A PAX global header: carries no file, ignored.
    Ignored,
}

/// Sorts a tar type flag into what we import, or the rule it breaks.
pub fn classify(entry_type: tar::EntryType) -> Result<EntryClass, Rule> {
    use tar::EntryType as T;
    match entry_type {
        T::Regular | T::Continuous => Ok(EntryClass::File),
        T::Directory => Ok(EntryClass::Directory),
        T::Symlink => Ok(EntryClass::Symlink),
        T::Link => Ok(EntryClass::HardLink),
        T::XGlobalHeader => Ok(EntryClass::Ignored),
        T::Char => Err(Rule::SpecialFile("character device")),
        T::Block => Err(Rule::SpecialFile("block device")),
        T::Fifo => Err(Rule::SpecialFile("FIFO")),
        T::GNUSparse => Err(Rule::SparseEntry),
        other => Err(Rule::UnknownType(other.as_byte())),
    }
}

/// Whether PAX records mark the entry as a sparse file (the `GNU.sparse.*` formats).
pub fn is_pax_sparse(key: &[u8]) -> bool {
    key.starts_with(b"GNU.sparse.")
}

/// Creates a missing directory while a parent path is resolved: given the writer, the directory
/// to create in and the name, returns the new directory, or `None` to stop resolving.
pub type CreateDirectory<'a> =
    dyn FnMut(&mut Writer, NodeId, &[u8]) -> Result<Option<NodeId>, crate::RootfsError> + 'a;

/// Walks `parents` from the root and returns the directory they name.
///
/// Symlinks met on the way are followed inside the rootfs: an absolute target restarts at the
/// rootfs's root, and `..` never climbs above it. Missing directories are created by `create`
/// (called with the directory to create in and the name), or end the walk with `Ok(None)` when it
/// returns `None`.
pub fn resolve_parent(
    writer: &mut Writer,
    parents: &[Vec<u8>],
    create: &mut CreateDirectory<'_>,
) -> Result<Result<Option<NodeId>, Rule>, crate::RootfsError> {
    let mut stack = vec![writer.root()];
    let mut pending: std::collections::VecDeque<Vec<u8>> = parents.iter().cloned().collect();
    let mut hops = 0usize;
    while let Some(name) = pending.pop_front() {
        let current = *stack.last().unwrap_or(&writer.root());
        match name.as_slice() {
            b"" | b"." => continue,
            b".." => {
                if stack.len() > 1 {
                    stack.pop();
                }
                continue;
            }
            _ => {}
        }
        let Some(node) = writer.lookup(current, &name) else {
            match create(writer, current, &name)? {
                Some(created) => {
                    stack.push(created);
                    continue;
                }
                None => return Ok(Ok(None)),
            }
        };
        match writer.kind(node) {
            NodeKind::Directory => stack.push(node),
            NodeKind::Symlink => {
                hops += 1;
                if hops > MAX_SYMLINK_HOPS {
                    return Ok(Err(Rule::SymlinkLoop));
                }
                let target = writer.symlink_target(node).unwrap_or_default().to_vec();
                if target.starts_with(b"/") {
                    stack.truncate(1);
                }
                for part in target.split(|b| *b == b'/').rev() {
                    pending.push_front(part.to_vec());
                }
            }
            NodeKind::File => {
                return Ok(Err(Rule::ParentNotDirectory(
                    String::from_utf8_lossy(&name).into_owned(),
                )))
            }
        }
    }
    Ok(Ok(Some(*stack.last().unwrap_or(&writer.root()))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(raw: &str) -> Result<Vec<String>, Rule> {
        normalize_path(raw.as_bytes()).map(|v| {
            v.into_iter()
                .map(|p| String::from_utf8(p).unwrap())
                .collect()
        })
    }

    #[test]
    fn normalizes_leading_dot_slash_and_inner_dots() {
        assert_eq!(parts("./usr/./bin//ls").unwrap(), ["usr", "bin", "ls"]);
        assert_eq!(parts("/etc/passwd").unwrap(), ["etc", "passwd"]);
        assert_eq!(parts("a/b/../c").unwrap(), ["a", "c"]);
        assert!(parts("./").unwrap().is_empty());
    }

    #[test]
    fn rejects_climbing_out() {
        assert_eq!(parts("../etc/passwd"), Err(Rule::PathEscapesRoot));
        assert_eq!(parts("a/../../etc"), Err(Rule::PathEscapesRoot));
    }
}
