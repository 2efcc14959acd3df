//! A streaming ext4 image writer, in the manner of hcsshim's `compactext4`.
//!
//! No `mke2fs`, no mount, no root, no staging directory: a [`Writer`] keeps the tree of
//! inodes in memory (metadata and block lists only), streams each file's bytes into the image
//! as they arrive ([`Writer::write_data`]), and writes every piece of metadata at the end
//! ([`Writer::finish`]).
//!
//! ```no_run
//! use nullspace_ext4::{Metadata, Options, Writer};
//! # fn main() -> Result<(), nullspace_ext4::Error> {
//! let file = std::fs::File::create("rootfs.ext4").map_err(|e| {
//!     nullspace_ext4::Error::Io { context: "creating rootfs.ext4".into(), source: e }
//! })?;
//! let mut w = Writer::create(file, Options::default())?;
//! let etc = w.create_dir(w.root(), b"etc", Metadata::with_mode(0o755))?;
//! let body = b"hello\n";
//! let data = w.write_data(&mut &body[..], body.len() as u64)?;
//! w.create_file(etc, b"motd", Metadata::with_mode(0o644), data)?;
//! let summary = w.finish()?;
//! println!("{} bytes", summary.size_bytes);
//! # Ok(()) }
//! ```
//!
//! # Layout
//!
//! 4 KiB blocks, 32768 blocks and up to 32768 inodes per group, 256-byte inodes with
//! `i_extra_isize` 32. Features: `has_journal` (optional), `ext_attr`, `dir_index`,
//! `filetype`, `extent`, `flex_bg`, `sparse_super`, `large_file`, `huge_file`, `dir_nlink`,
//! `extra_isize`; no `64bit`, no checksums, no `uninit_bg`, no resize inode
//! (`s_reserved_gdt_blocks` = 0, so the kernel converts to `meta_bg` when it grows the image
//! online).
//!
//! - Block 0 holds the superblock, blocks 1..=64 are kept for group descriptors (enough for
//!   1 TiB, the largest image written). Groups 1 and the powers of 3, 5 and 7 keep the same
//!   65 blocks for `sparse_super` backups; `sparse_super2` was not used because the kernel
//!   refuses online resizing with it.
//! - File data is allocated forward from block 65 as it streams. Blocks are never reused:
//!   released data is punched out of the file and is free in the bitmaps. All-zero blocks are
//!   never written, so the image stays sparse.
//! - At [`Writer::finish`]: directories, extent index blocks, xattr blocks (deduplicated by
//!   content), the journal, the bitmaps and the inode tables follow the data (`flex_bg` lets
//!   them live anywhere).
//! - Size: everything used plus headroom of max(20 %, 64 MiB), at least
//!   [`Options::min_size_bytes`], rounded up to whole groups (128 MiB). Inodes: one per
//!   4 KiB below 512 MiB and one per 16 KiB above (mke2fs's `small` and `default`), and at
//!   least the tree's count plus 25 %.
//! - Directories that fit one block are linear; larger ones are htrees (half-MD4, unsigned,
//!   seeded), one or two index levels: up to 259,588 leaf blocks, i.e. millions of entries even
//!   with 255-byte names. `lost+found` is inode 11 with four blocks.
//! - Symlinks under 60 bytes live in the inode, longer ones (up to 4095) in a block.
//! - Extended attributes go in the inode when they all fit, otherwise all in one block.
//! - Times carry nanoseconds and epoch bits (1901..2446); the creation time is the ctime.
//!
//! # Determinism
//!
//! The same calls in the same order give a byte-identical image. The UUID and hash seed
//! default to values derived from a digest of the final tree (names, metadata, content
//! hashes) and the options.
//!
//! # Benchmark
//!
//! `cargo run --release -p nullspace-ext4 --example bench_tar` builds a ~1 GB, ~50k-entry tar
//! and compares this writer with `mke2fs -d` and `tar -x` (see the example's docs).
#![deny(missing_docs)]

mod alloc;
mod bytes;
mod data;
mod dir;
mod error;
mod extents;
mod finish;
mod htree;
mod image;
mod inode;
mod journal;
mod layout;
mod meta;
mod superblock;
mod tree;
mod writer;
mod xattr;

pub use data::FileData;
pub use error::Error;
pub use meta::{Metadata, Timestamp};
pub use tree::{NodeId, NodeKind};
pub use writer::Writer;

/// Version of the on-disk output. Bumped whenever the bytes written for the same input change;
/// part of cache keys.
pub const WRITER_VERSION: &str = "nullspace-ext4/2";

/// The largest image the writer produces: 1 TiB (`layout::MAX_GROUPS` groups).
pub const MAX_IMAGE_BYTES: u64 = layout::MAX_GROUPS * layout::BLOCKS_PER_GROUP * layout::BLOCK_SIZE;

/// How to build an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// The image is at least this many bytes (rounded up to whole 128 MiB groups).
    pub min_size_bytes: Option<u64>,
    /// Whether to add an internal jbd2 journal (inode 8). Default: true.
    pub journal: bool,
    /// Filesystem UUID. Default: derived from the input's digest.
    pub uuid: Option<[u8; 16]>,
    /// Directory hash seed. Default: derived from the input's digest.
    pub hash_seed: Option<[u8; 16]>,
    /// Volume label (at most 16 bytes are kept).
    pub label: Option<String>,
    /// Superblock mkfs/write/check time and journal inode times. Default 0, for determinism.
    pub timestamp: i64,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            min_size_bytes: None,
            journal: true,
            uuid: None,
            hash_seed: None,
            label: None,
            timestamp: 0,
        }
    }
}

/// What [`Writer::finish`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Apparent size of the image file.
    pub size_bytes: u64,
    /// Blocks in the filesystem.
    pub block_count: u64,
    /// Blocks in use (data and metadata).
    pub blocks_used: u64,
    /// Inodes in the filesystem.
    pub inode_count: u64,
    /// Inodes in use, reserved ones included.
    pub inodes_used: u64,
    /// Filesystem UUID.
    pub uuid: [u8; 16],
    /// Directory hash seed.
    pub hash_seed: [u8; 16],
}
