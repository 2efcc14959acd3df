//! The internal jbd2 journal: its size rule and its superblock.

use crate::bytes::put32be;
use crate::layout::BS;

/// Journal blocks for an image of `blocks` blocks (mke2fs's default table).
pub(crate) fn default_blocks(blocks: u64) -> u64 {
    match blocks {
        0..32768 => 1024,
        32768..262144 => 4096,
        262144..524288 => 8192,
        524288..4194304 => 16384,
        4194304..8388608 => 32768,
        8388608..16777216 => 65536,
        16777216..33554432 => 131072,
        _ => 262144,
    }
}

/// The first journal block: a version-2 jbd2 superblock for an empty, clean journal.
pub(crate) fn superblock(blocks: u64, uuid: &[u8; 16]) -> Vec<u8> {
    let mut b = vec![0u8; BS];
    put32be(&mut b, 0, 0xC03B_3998); // magic
    put32be(&mut b, 4, 4); // superblock v2
    put32be(&mut b, 8, 0);
    put32be(&mut b, 12, BS as u32);
    put32be(&mut b, 16, blocks as u32); // s_maxlen
    put32be(&mut b, 20, 1); // s_first
    put32be(&mut b, 24, 1); // s_sequence
    put32be(&mut b, 28, 0); // s_start: clean
    b[48..64].copy_from_slice(uuid);
    put32be(&mut b, 64, 1); // s_nr_users
    b
}
