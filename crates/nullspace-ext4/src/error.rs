//! The crate's error type.

/// Everything that can go wrong while building an image.
///
/// Messages are lower case and name the path, name or limit that failed. Names that are not
/// UTF-8 are shown lossily.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading input or writing the image failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A name is not a valid single path component.
    #[error("invalid name {name:?} in {dir}: {reason}")]
    InvalidName {
        /// The directory the name was meant for.
        dir: String,
        /// The offending name.
        name: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// `create_*` or `link` on a name that is taken (remove it first).
    #[error("{path} already exists")]
    AlreadyExists {
        /// Path of the existing entry.
        path: String,
    },
    /// `remove` of a name that does not exist.
    #[error("{path} does not exist")]
    NotFound {
        /// Path that was looked up.
        path: String,
    },
    /// The parent handed to an operation is not a directory.
    #[error("{path} is not a directory")]
    NotADirectory {
        /// Path of the node that was used as a parent.
        path: String,
    },
    /// The node was removed from the tree and can no longer be used as a parent or link target.
    #[error("{what} refers to a removed node")]
    Removed {
        /// What the node was used for.
        what: &'static str,
    },
    /// A node handle from another writer.
    #[error("unknown node handle {0}")]
    UnknownNode(u32),
    /// Hard links to directories are not allowed.
    #[error("cannot hard link {path}: it is a directory")]
    LinkToDirectory {
        /// Path of the directory.
        path: String,
    },
    /// A file would get more hard links than ext4 allows.
    #[error("too many links to {path}: the limit is {limit}")]
    TooManyLinks {
        /// Path of the new link.
        path: String,
        /// The limit (65000).
        limit: u32,
    },
    /// A symlink target that ext4 cannot store.
    #[error("invalid symlink target for {path}: {reason}")]
    InvalidSymlinkTarget {
        /// Path of the symlink.
        path: String,
        /// Why it was rejected (empty, contains NUL, over 4095 bytes).
        reason: String,
    },
    /// An extended attribute ext4 cannot store.
    #[error("invalid xattr {name:?} on {path}: {reason}")]
    InvalidXattr {
        /// Path of the node (or `<metadata>` before it was attached).
        path: String,
        /// Name of the attribute.
        name: String,
        /// Why it was rejected.
        reason: String,
    },
    /// The extended attributes of one inode do not fit the inode plus one 4 KiB block.
    #[error("xattrs of {path} need {needed} bytes, more than fit in one {limit}-byte block")]
    XattrTooBig {
        /// Path of the node.
        path: String,
        /// Bytes the attributes need.
        needed: usize,
        /// Bytes one block offers.
        limit: usize,
    },
    /// The input stream ended before the announced size.
    #[error("file data ended early: expected {expected} bytes, got {got}")]
    ShortRead {
        /// Announced size.
        expected: u64,
        /// Bytes actually read.
        got: u64,
    },
    /// The image would exceed the largest size this writer supports.
    #[error("image too large: needs {needed_bytes} bytes, the limit is {limit_bytes} bytes")]
    ImageTooLarge {
        /// Bytes needed.
        needed_bytes: u64,
        /// The limit (1 TiB).
        limit_bytes: u64,
    },
    /// A directory has more entries than a two-level htree can index.
    #[error("directory {path} is too large: {blocks} leaf blocks, the limit is {limit}")]
    DirectoryTooLarge {
        /// Path of the directory.
        path: String,
        /// Leaf blocks needed.
        blocks: u64,
        /// The limit.
        limit: u64,
    },
    /// The tree has more inodes than the image can number.
    #[error("too many inodes: {count}, the limit is {limit}")]
    TooManyInodes {
        /// Inodes needed.
        count: u64,
        /// The limit.
        limit: u64,
    },
}

impl Error {
    /// An I/O error with its context.
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}
