//! The block allocator: strictly forward, never reuses a block, skips the regions reserved for
//! superblock and group-descriptor copies.

use crate::layout::{reserved_end, BLOCKS_PER_GROUP, BLOCK_SIZE, MAX_GROUPS};
use crate::Error;

/// A run of physical blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Run {
    /// First block.
    pub start: u64,
    /// Number of blocks.
    pub len: u64,
}

/// Forward ("bump") allocator over the whole image.
#[derive(Debug)]
pub(crate) struct Allocator {
    next: u64,
    /// Allocated runs in ascending order, coalesced. Which of them are still in use is
    /// decided by `finish` from the tree.
    used: Vec<Run>,
}

/// The first block at or after `block` outside any reserved region.
fn skip_reserved(block: u64) -> u64 {
    reserved_end(block).unwrap_or(block)
}

/// Where a run of `len` blocks wanting to start at `cursor` goes: `(start, granted)`. A run never
/// crosses a group boundary; if `contiguous`, it moves to the next group when it does not fit.
pub(crate) fn place(cursor: u64, len: u64, contiguous: bool) -> (u64, u64) {
    let mut start = skip_reserved(cursor);
    let room = |s: u64| (s / BLOCKS_PER_GROUP + 1) * BLOCKS_PER_GROUP - s;
    if contiguous && room(start) < len {
        start = skip_reserved((start / BLOCKS_PER_GROUP + 1) * BLOCKS_PER_GROUP);
    }
    (start, len.min(room(start)))
}

impl Allocator {
    /// An allocator whose first candidate block follows the primary superblock region.
    pub(crate) fn new() -> Allocator {
        Allocator {
            next: 0,
            used: Vec::new(),
        }
    }

    /// The first block not yet handed out.
    pub(crate) fn cursor(&self) -> u64 {
        self.next
    }

    /// Allocates up to `want` (> 0) blocks in one run; may return fewer.
    pub(crate) fn alloc(&mut self, want: u64) -> Result<Run, Error> {
        self.take(want, false)
    }

    /// Allocates exactly `len` contiguous blocks (`len` at most a group minus its reserved part).
    pub(crate) fn alloc_contiguous(&mut self, len: u64) -> Result<Run, Error> {
        self.take(len, true)
    }

    fn take(&mut self, want: u64, contiguous: bool) -> Result<Run, Error> {
        let (start, len) = place(self.next, want, contiguous);
        let limit = MAX_GROUPS * BLOCKS_PER_GROUP;
        if start + len > limit {
            return Err(Error::ImageTooLarge {
                needed_bytes: (start + len) * BLOCK_SIZE,
                limit_bytes: limit * BLOCK_SIZE,
            });
        }
        self.next = start + len;
        match self.used.last_mut() {
            Some(last) if last.start + last.len == start => last.len += len,
            _ => self.used.push(Run { start, len }),
        }
        Ok(Run { start, len })
    }

    /// Everything allocated at or after block `mark`, ascending and coalesced.
    pub(crate) fn allocated_since(&self, mark: u64) -> Vec<Run> {
        self.used
            .iter()
            .filter(|r| r.start + r.len > mark)
            .map(|r| {
                let start = r.start.max(mark);
                Run {
                    start,
                    len: r.start + r.len - start,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skips_reserved_and_group_ends() {
        let mut a = Allocator::new();
        let r = a.alloc(10).unwrap();
        assert_eq!(r, Run { start: 65, len: 10 });
        let r = a.alloc(40000).unwrap();
        assert_eq!(r.start, 75);
        assert_eq!(r.len, 32768 - 75);
        let r = a.alloc(10).unwrap();
        assert_eq!(r.start, 32768 + 65, "group 1 holds a backup");
        let r = a.alloc_contiguous(32768 - 50).unwrap();
        assert_eq!(r.start, 2 * 32768, "group 2 has no backup");
        let since = a.allocated_since(80);
        assert_eq!(
            since[0],
            Run {
                start: 80,
                len: 32768 - 80
            }
        );
    }
}
