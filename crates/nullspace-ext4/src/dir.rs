//! Directory blocks: a single linear block when the entries fit, otherwise an htree
//! (`dx_root`, optional `dx_node` level, hash-ordered leaves).

use crate::bytes::{put16, put32};
use crate::htree::name_hash;
use crate::layout::{ftype, BS};

/// One entry of a directory listing.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Entry<'a> {
    /// Name (1..=255 bytes).
    pub name: &'a [u8],
    /// Inode number.
    pub ino: u32,
    /// `ftype::*`.
    pub ftype: u8,
}

/// Hash version written in `dx_root` (half-MD4; unsigned via the superblock flag).
const DX_HASH_HALF_MD4: u8 = 1;
/// Index entries in the root block: (4096 - 32) / 8.
const ROOT_LIMIT: usize = (BS - 32) / 8;
/// Index entries in an interior node: (4096 - 8) / 8.
const NODE_LIMIT: usize = (BS - 8) / 8;
/// Most leaves a two-level tree (no `largedir`) can address.
pub(crate) const MAX_LEAVES: u64 = (ROOT_LIMIT * NODE_LIMIT) as u64;

/// On-disk size of an entry with a name of `len` bytes.
fn rec_len(len: usize) -> usize {
    (8 + len + 3) & !3
}

/// Fills one directory block entry by entry.
struct BlockBuilder {
    buf: Vec<u8>,
    pos: usize,
    last: Option<usize>,
}

impl BlockBuilder {
    fn new() -> BlockBuilder {
        BlockBuilder {
            buf: vec![0u8; BS],
            pos: 0,
            last: None,
        }
    }

    fn push(&mut self, ino: u32, name: &[u8], ftype: u8) {
        let len = rec_len(name.len());
        let p = self.pos;
        put32(&mut self.buf, p, ino);
        put16(&mut self.buf, p + 4, len as u16);
        self.buf[p + 6] = name.len() as u8;
        self.buf[p + 7] = ftype;
        self.buf[p + 8..p + 8 + name.len()].copy_from_slice(name);
        self.last = Some(p);
        self.pos += len;
    }

    /// Stretches the last entry to the end of the block (or writes an empty entry).
    fn finish(mut self) -> Vec<u8> {
        match self.last {
            Some(p) => put16(&mut self.buf, p + 4, (BS - p) as u16),
            None => put16(&mut self.buf, 4, BS as u16),
        }
        self.buf
    }
}

/// The blocks of a directory and whether they form an htree.
pub(crate) struct Built {
    /// Directory blocks in logical order.
    pub blocks: Vec<Vec<u8>>,
    /// Whether the directory is indexed (`EXT4_INDEX_FL`).
    pub indexed: bool,
}

/// Lays out a directory. `entries` exclude `.` and `..`. Linear directories are padded with
/// empty blocks up to `min_blocks`. Fails with the number of leaves when an htree would need
/// more than [`MAX_LEAVES`].
pub(crate) fn build(
    ino: u32,
    parent: u32,
    entries: &[Entry<'_>],
    seed: &[u32; 4],
    min_blocks: usize,
) -> Result<Built, u64> {
    let total: usize = 24 + entries.iter().map(|e| rec_len(e.name.len())).sum::<usize>();
    if total <= BS {
        let mut b = BlockBuilder::new();
        b.push(ino, b".", ftype::DIR);
        b.push(parent, b"..", ftype::DIR);
        for e in entries {
            b.push(e.ino, e.name, e.ftype);
        }
        let mut blocks = vec![b.finish()];
        while blocks.len() < min_blocks {
            blocks.push(BlockBuilder::new().finish());
        }
        return Ok(Built {
            blocks,
            indexed: false,
        });
    }
    build_htree(ino, parent, entries, seed).map(|blocks| Built {
        blocks,
        indexed: true,
    })
}

fn build_htree(
    ino: u32,
    parent: u32,
    entries: &[Entry<'_>],
    seed: &[u32; 4],
) -> Result<Vec<Vec<u8>>, u64> {
    let mut hashed: Vec<(u32, u32, &Entry<'_>)> = entries
        .iter()
        .map(|e| {
            let (h, m) = name_hash(e.name, seed);
            (h, m, e)
        })
        .collect();
    hashed.sort_by(|a, b| (a.0, a.1, a.2.name).cmp(&(b.0, b.1, b.2.name)));

    // Split into leaves; a run of equal hashes is kept in one leaf where it fits.
    let size = |i: usize| rec_len(hashed[i].2.name.len());
    let mut leaves: Vec<(usize, usize)> = Vec::new();
    let mut start = 0usize;
    let mut used = 0usize;
    for i in 0..hashed.len() {
        if used + size(i) > BS {
            let mut split = i;
            while split > start && hashed[split - 1].0 == hashed[i].0 {
                split -= 1;
            }
            let moved: usize = (split..i).map(size).sum();
            if split == start || moved + size(i) > BS {
                split = i;
            }
            leaves.push((start, split));
            start = split;
            used = (split..i).map(size).sum();
        }
        used += size(i);
    }
    leaves.push((start, hashed.len()));
    let n_leaves = leaves.len();
    if n_leaves as u64 > MAX_LEAVES {
        return Err(n_leaves as u64);
    }

    // Hash that starts each leaf; bit 0 marks a collision run continued from the previous leaf.
    let leaf_hash = |k: usize| {
        let (s, _) = leaves[k];
        let h = hashed[s].0;
        if s > 0 && hashed[s - 1].0 == h {
            h | 1
        } else {
            h
        }
    };

    let levels = usize::from(n_leaves > ROOT_LIMIT);
    let n_nodes = if levels == 1 {
        n_leaves.div_ceil(NODE_LIMIT)
    } else {
        0
    };
    let first_leaf = 1 + n_nodes;
    let mut blocks = Vec::with_capacity(1 + n_nodes + n_leaves);

    // dx_root: '.', '..' spanning the block, dx_root_info, then the index.
    let mut root = vec![0u8; BS];
    put32(&mut root, 0, ino);
    put16(&mut root, 4, 12);
    root[6] = 1;
    root[7] = ftype::DIR;
    root[8] = b'.';
    put32(&mut root, 12, parent);
    put16(&mut root, 16, (BS - 12) as u16);
    root[18] = 2;
    root[19] = ftype::DIR;
    root[20] = b'.';
    root[21] = b'.';
    put32(&mut root, 24, 0);
    root[28] = DX_HASH_HALF_MD4;
    root[29] = 8;
    root[30] = levels as u8;
    root[31] = 0;
    let root_entries: Vec<(u32, u32)> = if levels == 0 {
        (0..n_leaves)
            .map(|k| (leaf_hash(k), (first_leaf + k) as u32))
            .collect()
    } else {
        (0..n_nodes)
            .map(|j| (leaf_hash(j * NODE_LIMIT), (1 + j) as u32))
            .collect()
    };
    write_index(&mut root[32..], ROOT_LIMIT, &root_entries);
    blocks.push(root);

    for j in 0..n_nodes {
        let mut node = vec![0u8; BS];
        put16(&mut node, 4, BS as u16);
        let ks = j * NODE_LIMIT..((j + 1) * NODE_LIMIT).min(n_leaves);
        let list: Vec<(u32, u32)> = ks
            .map(|k| (leaf_hash(k), (first_leaf + k) as u32))
            .collect();
        write_index(&mut node[8..], NODE_LIMIT, &list);
        blocks.push(node);
    }

    for &(s, e) in &leaves {
        let mut b = BlockBuilder::new();
        for (_, _, entry) in &hashed[s..e] {
            b.push(entry.ino, entry.name, entry.ftype);
        }
        blocks.push(b.finish());
    }
    Ok(blocks)
}

/// Writes `count/limit` and the index entries; the first entry's hash is implicit.
fn write_index(buf: &mut [u8], limit: usize, entries: &[(u32, u32)]) {
    put16(buf, 0, limit as u16);
    put16(buf, 2, entries.len() as u16);
    for (i, &(hash, block)) in entries.iter().enumerate() {
        if i > 0 {
            put32(buf, 8 * i, hash);
        }
        put32(buf, 8 * i + 4, block);
    }
}
