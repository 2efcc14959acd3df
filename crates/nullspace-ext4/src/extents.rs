//! Extents and extent trees: up to four extents live in the inode, more get index and leaf
//! blocks to whatever depth they need.

use crate::alloc::{Allocator, Run};
use crate::bytes::{put16, put32};
use crate::image::Image;
use crate::layout::{BS, MAX_EXTENT_LEN};
use crate::Error;

/// Extent header magic.
const MAGIC: u16 = 0xF30A;
/// Entries in the inode's `i_block` (60 bytes: 12 header + 4 x 12).
const IN_INODE: usize = 4;
/// Entries in one 4 KiB tree block.
const PER_BLOCK: usize = (BS - 12) / 12;

/// One mapping of consecutive logical blocks to consecutive physical blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Extent {
    /// First logical block of the file.
    pub logical: u32,
    /// First physical block.
    pub start: u64,
    /// Number of blocks (1..=32768).
    pub len: u32,
}

/// Appends `run` as the next logical blocks of `extents`, merging with the last extent when the
/// run continues it.
pub(crate) fn push_run(extents: &mut Vec<Extent>, logical: u64, run: Run) {
    let mut logical = logical;
    let mut run = run;
    while run.len > 0 {
        if let Some(last) = extents.last_mut() {
            let room = MAX_EXTENT_LEN - u64::from(last.len);
            if last.start + u64::from(last.len) == run.start && room > 0 {
                let n = room.min(run.len);
                last.len += n as u32;
                run.start += n;
                run.len -= n;
                logical += n;
                continue;
            }
        }
        let n = run.len.min(MAX_EXTENT_LEN);
        extents.push(Extent {
            logical: logical as u32,
            start: run.start,
            len: n as u32,
        });
        run.start += n;
        run.len -= n;
        logical += n;
    }
}

/// Allocates `count` blocks and returns them as extents starting at logical block 0.
pub(crate) fn alloc_extents(alloc: &mut Allocator, count: u64) -> Result<Vec<Extent>, Error> {
    let mut extents = Vec::new();
    let mut done = 0;
    while done < count {
        let run = alloc.alloc(count - done)?;
        push_run(&mut extents, done, run);
        done += run.len;
    }
    Ok(extents)
}

fn header(buf: &mut [u8], entries: usize, max: usize, depth: u16) {
    put16(buf, 0, MAGIC);
    put16(buf, 2, entries as u16);
    put16(buf, 4, max as u16);
    put16(buf, 6, depth);
    put32(buf, 8, 0);
}

fn leaf_entry(buf: &mut [u8], e: &Extent) {
    put32(buf, 0, e.logical);
    put16(buf, 4, e.len as u16);
    put16(buf, 6, (e.start >> 32) as u16);
    put32(buf, 8, e.start as u32);
}

fn index_entry(buf: &mut [u8], logical: u32, block: u64) {
    put32(buf, 0, logical);
    put32(buf, 4, block as u32);
    put16(buf, 8, (block >> 32) as u16);
    put16(buf, 10, 0);
}

/// An entry of some tree level: a leaf extent or a pointer to a child block.
#[derive(Clone, Copy)]
enum Node {
    Leaf(Extent),
    Index { logical: u32, block: u64 },
}

impl Node {
    fn logical(&self) -> u32 {
        match self {
            Node::Leaf(e) => e.logical,
            Node::Index { logical, .. } => *logical,
        }
    }

    fn write(&self, buf: &mut [u8]) {
        match self {
            Node::Leaf(e) => leaf_entry(buf, e),
            Node::Index { logical, block } => index_entry(buf, *logical, *block),
        }
    }
}

/// Builds the extent tree for `extents`: writes any tree blocks to the image and returns the
/// inode's `i_block` bytes and the number of tree blocks used.
pub(crate) fn build_tree(
    extents: &[Extent],
    alloc: &mut Allocator,
    image: &Image,
) -> Result<([u8; 60], u64), Error> {
    let mut level: Vec<Node> = extents.iter().map(|&e| Node::Leaf(e)).collect();
    let mut depth = 0u16;
    let mut tree_blocks = 0u64;
    while level.len() > IN_INODE {
        let mut next = Vec::with_capacity(level.len().div_ceil(PER_BLOCK));
        for chunk in level.chunks(PER_BLOCK) {
            let mut block = vec![0u8; BS];
            header(&mut block, chunk.len(), PER_BLOCK, depth);
            for (i, node) in chunk.iter().enumerate() {
                node.write(&mut block[12 + 12 * i..24 + 12 * i]);
            }
            let run = alloc.alloc(1)?;
            image.write_blocks(run.start, &block)?;
            tree_blocks += 1;
            next.push(Node::Index {
                logical: chunk[0].logical(),
                block: run.start,
            });
        }
        level = next;
        depth += 1;
    }
    let mut root = [0u8; 60];
    header(&mut root, level.len(), IN_INODE, depth);
    for (i, node) in level.iter().enumerate() {
        node.write(&mut root[12 + 12 * i..24 + 12 * i]);
    }
    Ok((root, tree_blocks))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_and_splits_runs() {
        let mut v = Vec::new();
        push_run(
            &mut v,
            0,
            Run {
                start: 100,
                len: 10,
            },
        );
        push_run(
            &mut v,
            10,
            Run {
                start: 110,
                len: 40000,
            },
        );
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].len, 32768);
        assert_eq!(v[1].logical, 32768);
        assert_eq!(v[1].len, 40010 - 32768);
        push_run(&mut v, 40010, Run { start: 1, len: 1 });
        assert_eq!(v.len(), 3);
    }
}
