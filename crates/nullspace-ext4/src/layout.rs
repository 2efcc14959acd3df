//! On-disk layout constants and the placement rules shared by the allocator and `finish`.

/// Filesystem block size in bytes (4 KiB).
pub(crate) const BLOCK_SIZE: u64 = 4096;
/// Block size as a `usize`, for buffers.
pub(crate) const BS: usize = 4096;
/// Blocks (and inodes, at most) per block group.
pub(crate) const BLOCKS_PER_GROUP: u64 = 32768;
/// On-disk inode size.
pub(crate) const INODE_SIZE: usize = 256;
/// Inodes per inode-table block.
pub(crate) const INODES_PER_BLOCK: u64 = BLOCK_SIZE / INODE_SIZE as u64;
/// `i_extra_isize`: fields up to and including `i_projid`.
pub(crate) const EXTRA_ISIZE: u16 = 32;
/// Offset of the in-inode extended attribute area (128 + extra_isize).
pub(crate) const INODE_XATTR_OFFSET: usize = 128 + EXTRA_ISIZE as usize;
/// Size of one group descriptor (no `64bit` feature).
pub(crate) const DESC_SIZE: u64 = 32;
/// The largest image we write: 1 TiB, i.e. 8192 groups.
pub(crate) const MAX_GROUPS: u64 = 8192;
/// Group-descriptor blocks reserved after every superblock copy, enough for `MAX_GROUPS`.
pub(crate) const GDT_RESERVED_BLOCKS: u64 = MAX_GROUPS * DESC_SIZE / BLOCK_SIZE;
/// Longest initialised extent.
pub(crate) const MAX_EXTENT_LEN: u64 = 32768;
/// One inode per this many bytes of an image of 512 MiB or more, at least (mke2fs `default`).
pub(crate) const INODE_RATIO: u64 = 16384;
/// One inode per this many bytes of a smaller image, at least (mke2fs `small`).
pub(crate) const SMALL_INODE_RATIO: u64 = 4096;
/// Smallest free space left in the image: 64 MiB (see [`crate::sizing`]).
pub(crate) const MIN_HEADROOM_BLOCKS: u64 = 16384;

/// The root directory's inode.
pub(crate) const ROOT_INO: u32 = 2;
/// The journal's inode.
pub(crate) const JOURNAL_INO: u32 = 8;
/// `lost+found`, the first non-reserved inode.
pub(crate) const LOST_FOUND_INO: u32 = 11;
/// First inode handed to the tree.
pub(crate) const FIRST_FREE_INO: u32 = 12;
/// Blocks preallocated for `lost+found` (as mke2fs does for 4 KiB blocks).
pub(crate) const LOST_FOUND_BLOCKS: usize = 4;

/// Hard-link limit of files (and of directories before `dir_nlink` takes over).
pub(crate) const LINK_MAX: u32 = 65000;
/// Longest file name.
pub(crate) const NAME_MAX: usize = 255;
/// Longest symlink target.
pub(crate) const SYMLINK_MAX: usize = 4095;
/// Symlink targets shorter than this live in `i_block` ("fast" symlinks).
pub(crate) const FAST_SYMLINK_MAX: usize = 59;

/// Whether `group` holds a superblock and group-descriptor copy under `sparse_super`:
/// group 0, group 1 and the powers of 3, 5 and 7.
pub(crate) fn has_super(group: u64) -> bool {
    if group <= 1 {
        return true;
    }
    [3u64, 5, 7].iter().any(|&base| {
        let mut g = group;
        while g.is_multiple_of(base) {
            g /= base;
        }
        g == 1
    })
}

/// If `block` lies in a region reserved for a superblock copy and its descriptors, the first
/// block after that region.
pub(crate) fn reserved_end(block: u64) -> Option<u64> {
    let group = block / BLOCKS_PER_GROUP;
    let start = group * BLOCKS_PER_GROUP;
    let end = start + 1 + GDT_RESERVED_BLOCKS;
    (has_super(group) && block < end).then_some(end)
}

/// Blocks of group descriptors for `groups` groups.
pub(crate) fn gdt_blocks(groups: u64) -> u64 {
    (groups * DESC_SIZE).div_ceil(BLOCK_SIZE)
}

/// Feature flags written to the superblock.
pub(crate) mod feature {
    /// compat: has_journal.
    pub const COMPAT_HAS_JOURNAL: u32 = 0x4;
    /// compat: ext_attr.
    pub const COMPAT_EXT_ATTR: u32 = 0x8;
    /// compat: dir_index.
    pub const COMPAT_DIR_INDEX: u32 = 0x20;
    /// incompat: filetype.
    pub const INCOMPAT_FILETYPE: u32 = 0x2;
    /// incompat: extent.
    pub const INCOMPAT_EXTENTS: u32 = 0x40;
    /// incompat: flex_bg.
    pub const INCOMPAT_FLEX_BG: u32 = 0x200;
    /// ro_compat: sparse_super.
    pub const RO_COMPAT_SPARSE_SUPER: u32 = 0x1;
    /// ro_compat: large_file.
    pub const RO_COMPAT_LARGE_FILE: u32 = 0x2;
    /// ro_compat: huge_file.
    pub const RO_COMPAT_HUGE_FILE: u32 = 0x8;
    /// ro_compat: dir_nlink.
    pub const RO_COMPAT_DIR_NLINK: u32 = 0x20;
    /// ro_compat: extra_isize.
    pub const RO_COMPAT_EXTRA_ISIZE: u32 = 0x40;
}

/// Inode flags.
pub(crate) mod iflags {
    /// Hashed (htree) directory.
    pub const INDEX: u32 = 0x1000;
    /// Blocks mapped by an extent tree.
    pub const EXTENTS: u32 = 0x80000;
}

/// File type bits of `i_mode`.
pub(crate) mod mode {
    /// Regular file.
    pub const S_IFREG: u16 = 0o100000;
    /// Directory.
    pub const S_IFDIR: u16 = 0o040000;
    /// Symbolic link.
    pub const S_IFLNK: u16 = 0o120000;
}

/// Directory entry file types (`filetype` feature).
pub(crate) mod ftype {
    /// Regular file.
    pub const REG: u8 = 1;
    /// Directory.
    pub const DIR: u8 = 2;
    /// Symbolic link.
    pub const SYMLINK: u8 = 7;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backup_groups() {
        let groups: Vec<u64> = (0..50).filter(|&g| has_super(g)).collect();
        assert_eq!(groups, vec![0, 1, 3, 5, 7, 9, 25, 27, 49]);
        assert_eq!(GDT_RESERVED_BLOCKS, 64);
        assert_eq!(reserved_end(0), Some(65));
        assert_eq!(reserved_end(65), None);
        assert_eq!(reserved_end(32768 + 3), Some(32768 + 65));
        assert_eq!(reserved_end(2 * 32768), None);
    }
}
