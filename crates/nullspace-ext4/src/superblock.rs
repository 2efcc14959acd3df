//! The superblock and group descriptors.

use crate::bytes::{put16, put32};
use crate::layout::{feature as f, BLOCKS_PER_GROUP, EXTRA_ISIZE, FIRST_FREE_INO, INODE_SIZE};

/// `s_flags`: directory hashes use unsigned chars.
const FLAGS_UNSIGNED_HASH: u32 = 0x2;
/// Default mount options: `user_xattr` and `acl`, as mke2fs sets.
const DEFMNT_XATTR_ACL: u32 = 0x0004 | 0x0008;

/// Everything the superblock records.
#[derive(Debug, Clone)]
pub(crate) struct Superblock {
    /// Total blocks.
    pub blocks: u64,
    /// Total inodes.
    pub inodes: u32,
    /// Free blocks.
    pub free_blocks: u64,
    /// Free inodes.
    pub free_inodes: u32,
    /// Inodes per group.
    pub inodes_per_group: u32,
    /// Filesystem UUID.
    pub uuid: [u8; 16],
    /// Directory hash seed.
    pub hash_seed: [u8; 16],
    /// Volume label (NUL padded).
    pub label: [u8; 16],
    /// mkfs, write and last-check time.
    pub time: u32,
    /// Journal inode backup (`s_jnl_blocks`), when there is a journal.
    pub journal_backup: Option<[u32; 17]>,
}

impl Superblock {
    /// The 1024-byte superblock as stored in `group` (0 for the primary).
    pub(crate) fn encode(&self, group: u16) -> [u8; 1024] {
        let mut b = [0u8; 1024];
        put32(&mut b, 0, self.inodes);
        put32(&mut b, 4, self.blocks as u32);
        put32(&mut b, 8, 0); // no blocks reserved for root
        put32(&mut b, 12, self.free_blocks as u32);
        put32(&mut b, 16, self.free_inodes);
        put32(&mut b, 20, 0); // first data block
        put32(&mut b, 24, 2); // log2(4096) - 10
        put32(&mut b, 28, 2);
        put32(&mut b, 32, BLOCKS_PER_GROUP as u32);
        put32(&mut b, 36, BLOCKS_PER_GROUP as u32);
        put32(&mut b, 40, self.inodes_per_group);
        put32(&mut b, 44, 0); // mount time
        put32(&mut b, 48, self.time);
        put16(&mut b, 52, 0); // mount count
        put16(&mut b, 54, 0xFFFF); // max mount count: no forced checks
        put16(&mut b, 56, 0xEF53);
        put16(&mut b, 58, 1); // clean
        put16(&mut b, 60, 1); // errors: continue
        put32(&mut b, 64, self.time); // last check
        put32(&mut b, 76, 1); // dynamic revision
        put32(&mut b, 84, FIRST_FREE_INO - 1);
        put16(&mut b, 88, INODE_SIZE as u16);
        put16(&mut b, 90, group);
        let journal = self.journal_backup.is_some();
        let compat = f::COMPAT_EXT_ATTR
            | f::COMPAT_DIR_INDEX
            | if journal { f::COMPAT_HAS_JOURNAL } else { 0 };
        put32(&mut b, 92, compat);
        put32(
            &mut b,
            96,
            f::INCOMPAT_FILETYPE | f::INCOMPAT_EXTENTS | f::INCOMPAT_FLEX_BG,
        );
        put32(
            &mut b,
            100,
            f::RO_COMPAT_SPARSE_SUPER
                | f::RO_COMPAT_LARGE_FILE
                | f::RO_COMPAT_HUGE_FILE
                | f::RO_COMPAT_DIR_NLINK
                | f::RO_COMPAT_EXTRA_ISIZE,
        );
        b[104..120].copy_from_slice(&self.uuid);
        b[120..136].copy_from_slice(&self.label);
        put16(&mut b, 206, 0); // no reserved GDT blocks: online resize converts to meta_bg
        if let Some(jnl) = &self.journal_backup {
            put32(&mut b, 224, crate::layout::JOURNAL_INO);
            b[253] = 1; // s_jnl_backup_type: EXT3_JNL_BACKUP_BLOCKS
            for (i, w) in jnl.iter().enumerate() {
                put32(&mut b, 268 + 4 * i, *w);
            }
        }
        b[236..252].copy_from_slice(&self.hash_seed);
        b[252] = 1; // default hash: half_md4
        put32(&mut b, 256, DEFMNT_XATTR_ACL);
        put32(&mut b, 264, self.time); // mkfs time
        put32(&mut b, 336, (self.blocks >> 32) as u32);
        put32(&mut b, 344, (self.free_blocks >> 32) as u32);
        put16(&mut b, 348, EXTRA_ISIZE);
        put16(&mut b, 350, EXTRA_ISIZE);
        put32(&mut b, 352, FLAGS_UNSIGNED_HASH);
        b[372] = 4; // log2 of groups per flex group
        b
    }
}

/// One group descriptor.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct GroupDesc {
    /// Block bitmap block.
    pub block_bitmap: u64,
    /// Inode bitmap block.
    pub inode_bitmap: u64,
    /// First inode-table block.
    pub inode_table: u64,
    /// Free blocks in the group.
    pub free_blocks: u32,
    /// Free inodes in the group.
    pub free_inodes: u32,
    /// Directories in the group.
    pub used_dirs: u32,
}

impl GroupDesc {
    /// The 32-byte on-disk descriptor.
    pub(crate) fn encode(&self, out: &mut [u8]) {
        put32(out, 0, self.block_bitmap as u32);
        put32(out, 4, self.inode_bitmap as u32);
        put32(out, 8, self.inode_table as u32);
        put16(out, 12, self.free_blocks as u16);
        put16(out, 14, self.free_inodes as u16);
        put16(out, 16, self.used_dirs as u16);
    }
}
