//! On-disk inodes (256 bytes, `i_extra_isize` 32).

use crate::bytes::{put16, put32};
use crate::layout::{EXTRA_ISIZE, INODE_SIZE, INODE_XATTR_OFFSET};
use crate::meta::Timestamp;
use crate::xattr::INODE_AREA;

/// What `finish` knows about one inode besides the node's metadata.
#[derive(Debug, Clone)]
pub(crate) struct InodeRec {
    /// File type bits (`mode::S_IF*`).
    pub file_type: u16,
    /// Link count as stored.
    pub links: u16,
    /// `i_size`.
    pub size: u64,
    /// Filesystem blocks charged to the inode (data, tree and xattr blocks).
    pub blocks: u64,
    /// `i_flags`.
    pub flags: u32,
    /// `i_block`: extent tree root or fast symlink target.
    pub i_block: [u8; 60],
    /// Xattr block, or 0.
    pub file_acl: u32,
}

/// Owner, permissions and times of an inode.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Attrs {
    /// Permission bits (`0o7777`).
    pub perm: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Access time.
    pub atime: Timestamp,
    /// Modification time.
    pub mtime: Timestamp,
    /// Change (and creation) time.
    pub ctime: Timestamp,
}

impl InodeRec {
    /// Encodes the inode into `out` (256 bytes).
    pub(crate) fn encode(&self, attrs: &Attrs, xattrs: Option<&[u8; INODE_AREA]>, out: &mut [u8]) {
        debug_assert_eq!(out.len(), INODE_SIZE);
        let mode = self.file_type | (attrs.perm & 0o7777) as u16;
        put16(out, 0, mode);
        put16(out, 2, attrs.uid as u16);
        put32(out, 4, self.size as u32);
        let (at, at_x) = attrs.atime.encode();
        let (ct, ct_x) = attrs.ctime.encode();
        let (mt, mt_x) = attrs.mtime.encode();
        put32(out, 8, at);
        put32(out, 12, ct);
        put32(out, 16, mt);
        put16(out, 24, attrs.gid as u16);
        put16(out, 26, self.links);
        let sectors = self.blocks * 8;
        put32(out, 28, sectors as u32);
        put32(out, 32, self.flags);
        out[40..100].copy_from_slice(&self.i_block);
        put32(out, 104, self.file_acl);
        put32(out, 108, (self.size >> 32) as u32);
        put16(out, 116, (sectors >> 32) as u16);
        put16(out, 120, (attrs.uid >> 16) as u16);
        put16(out, 122, (attrs.gid >> 16) as u16);
        put16(out, 128, EXTRA_ISIZE);
        put32(out, 132, ct_x);
        put32(out, 136, mt_x);
        put32(out, 140, at_x);
        put32(out, 144, ct);
        put32(out, 148, ct_x);
        if let Some(area) = xattrs {
            out[INODE_XATTR_OFFSET..].copy_from_slice(area);
        }
    }
}
