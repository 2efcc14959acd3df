//! `Writer::finish`: numbers the inodes, writes directories, extent trees, xattr blocks, the
//! journal, then sizes the image and writes bitmaps, inode tables, descriptors and superblocks.

use std::collections::{BTreeMap, HashMap, VecDeque};

use sha2::{Digest, Sha256};
use xxhash_rust::xxh3::Xxh3;

use crate::alloc::{place, Run};
use crate::dir::{self, MAX_LEAVES};
use crate::extents::{alloc_extents, build_tree, Extent};
use crate::htree::seed_words;
use crate::inode::{Attrs, InodeRec};
use crate::layout::*;
use crate::meta::{Metadata, Timestamp};
use crate::superblock::{GroupDesc, Superblock};
use crate::tree::{Body, NodeId, NodeKind, ROOT};
use crate::xattr::{self, INODE_AREA};
use crate::{journal, Error, Summary, Writer};

/// Inode numbering of the live tree.
struct Numbering {
    /// Inode number per node index (0: not in the tree).
    ino_of: Vec<u32>,
    /// Node per inode number (index = ino).
    node_of: Vec<Option<NodeId>>,
}

impl Writer {
    /// Writes all metadata and completes the image. Returns what was written.
    pub fn finish(mut self) -> Result<Summary, Error> {
        if let Some(e) = self.deferred.take() {
            return Err(e);
        }
        if self.lookup(ROOT, b"lost+found").is_none() {
            self.create_dir(ROOT, b"lost+found", Metadata::with_mode(0o700))?;
        }
        let mark = self.alloc.cursor();
        let num = self.number()?;
        let last_ino = num.node_of.len() as u64 - 1;

        let (uuid, hash_seed) = self.identity(&num);
        let seed = seed_words(&hash_seed);

        let mut recs: Vec<Option<InodeRec>> = vec![None; num.node_of.len()];
        let mut areas: BTreeMap<u32, [u8; INODE_AREA]> = BTreeMap::new();
        let mut xattr_blocks: HashMap<[u8; 32], (u64, u32)> = HashMap::new();
        let mut data_runs: Vec<Run> = Vec::new();
        for ino in 1..num.node_of.len() {
            let Some(id) = num.node_of[ino] else { continue };
            let ino = ino as u32;
            let mut rec = self.inode_body(id, ino, &num, &seed, &mut data_runs)?;
            let placement =
                xattr::place(&self.tree.nodes[id.0 as usize].meta.xattrs).map_err(|_| {
                    Error::InvalidXattr {
                        path: self.tree.path(id),
                        name: String::new(),
                        reason: "rejected at finish".into(),
                    }
                })?;
            if let Some(area) = placement.inode {
                areas.insert(ino, area);
            }
            if let Some(mut block) = placement.block {
                let key: [u8; 32] = Sha256::digest(&block).into();
                let block_nr = match xattr_blocks.get_mut(&key) {
                    Some((nr, refs)) => {
                        *refs += 1;
                        self.image
                            .write_raw(*nr * BLOCK_SIZE + 4, &refs.to_le_bytes())?;
                        *nr
                    }
                    None => {
                        let run = self.alloc.alloc(1)?;
                        xattr::set_refcount(&mut block, 1);
                        self.image.write_blocks(run.start, &block)?;
                        xattr_blocks.insert(key, (run.start, 1));
                        run.start
                    }
                };
                rec.file_acl = block_nr as u32;
                rec.blocks += 1;
            }
            recs[ino as usize] = Some(rec);
        }

        // Size the image, then place the journal, bitmaps and inode tables.
        let plan = self.plan(last_ino)?;
        let groups = plan.groups;
        let ipg = plan.inodes_per_group;
        let journal_backup = if plan.journal_blocks > 0 {
            let (rec, backup) = self.write_journal(plan.journal_blocks, &uuid)?;
            recs[JOURNAL_INO as usize] = Some(rec);
            Some(backup)
        } else {
            None
        };
        let mut descs = vec![GroupDesc::default(); groups as usize];
        for d in descs.iter_mut() {
            d.block_bitmap = self.alloc.alloc(1)?.start;
        }
        for d in descs.iter_mut() {
            d.inode_bitmap = self.alloc.alloc(1)?.start;
        }
        let itable_blocks = u64::from(ipg) / INODES_PER_BLOCK;
        for d in descs.iter_mut() {
            d.inode_table = self.alloc.alloc_contiguous(itable_blocks)?.start;
        }
        let total_blocks = groups * BLOCKS_PER_GROUP;
        if self.alloc.cursor() > total_blocks {
            return Err(Error::ImageTooLarge {
                needed_bytes: self.alloc.cursor() * BLOCK_SIZE,
                limit_bytes: total_blocks * BLOCK_SIZE,
            });
        }

        // Block bitmaps.
        let mut used = data_runs;
        used.extend(self.alloc.allocated_since(mark));
        let gdt = gdt_blocks(groups);
        for g in (0..groups).filter(|&g| has_super(g)) {
            used.push(Run {
                start: g * BLOCKS_PER_GROUP,
                len: 1 + gdt,
            });
        }
        used.sort_by_key(|r| r.start);
        let mut free_blocks_total = 0u64;
        let mut ri = 0usize;
        for (g, desc) in descs.iter_mut().enumerate() {
            let g0 = g as u64 * BLOCKS_PER_GROUP;
            let g1 = g0 + BLOCKS_PER_GROUP;
            let mut bitmap = vec![0u8; BS];
            let mut count = 0u64;
            while ri < used.len() && used[ri].start < g1 {
                let r = used[ri];
                let s = r.start.max(g0);
                let e = (r.start + r.len).min(g1);
                for b in s..e {
                    let bit = (b - g0) as usize;
                    if bitmap[bit / 8] & (1 << (bit % 8)) == 0 {
                        bitmap[bit / 8] |= 1 << (bit % 8);
                        count += 1;
                    }
                }
                if r.start + r.len > g1 {
                    break;
                }
                ri += 1;
            }
            desc.free_blocks = (BLOCKS_PER_GROUP - count) as u32;
            free_blocks_total += BLOCKS_PER_GROUP - count;
            self.image.write_blocks(desc.block_bitmap, &bitmap)?;
        }

        // Inode bitmaps and tables.
        let mut free_inodes_total = 0u64;
        let lpf_used = num.node_of[LOST_FOUND_INO as usize].is_some();
        for (g, desc) in descs.iter_mut().enumerate() {
            let first = g as u64 * u64::from(ipg) + 1;
            let mut bitmap = vec![0u8; BS];
            for bit in ipg as usize..BS * 8 {
                bitmap[bit / 8] |= 1 << (bit % 8);
            }
            let mut table = vec![0u8; ipg as usize * INODE_SIZE];
            let mut used_count = 0u32;
            for i in 0..u64::from(ipg) {
                let ino = first + i;
                if ino > last_ino {
                    break;
                }
                let in_use = ino < u64::from(LOST_FOUND_INO)
                    || (ino == u64::from(LOST_FOUND_INO) && lpf_used)
                    || ino > u64::from(LOST_FOUND_INO);
                if in_use {
                    bitmap[i as usize / 8] |= 1 << (i % 8);
                    used_count += 1;
                }
                if let Some(rec) = &recs[ino as usize] {
                    let attrs = self.attrs_of(&num, ino as usize);
                    let out = &mut table[i as usize * INODE_SIZE..(i as usize + 1) * INODE_SIZE];
                    rec.encode(&attrs, areas.get(&(ino as u32)), out);
                    if let Some(Some(id)) = num.node_of.get(ino as usize) {
                        if self.tree.nodes[id.0 as usize].kind() == NodeKind::Directory {
                            desc.used_dirs += 1;
                        }
                    }
                }
            }
            desc.free_inodes = ipg - used_count;
            free_inodes_total += u64::from(ipg - used_count);
            self.image.write_blocks(desc.inode_bitmap, &bitmap)?;
            self.image.write_blocks(desc.inode_table, &table)?;
        }

        // Descriptors and superblocks.
        let mut gdt_buf = vec![0u8; (gdt * BLOCK_SIZE) as usize];
        for (g, d) in descs.iter().enumerate() {
            d.encode(&mut gdt_buf[g * DESC_SIZE as usize..(g + 1) * DESC_SIZE as usize]);
        }
        let mut label = [0u8; 16];
        if let Some(l) = &self.options.label {
            let n = l.len().min(16);
            label[..n].copy_from_slice(&l.as_bytes()[..n]);
        }
        let sb = Superblock {
            blocks: total_blocks,
            inodes: (groups * u64::from(ipg)) as u32,
            free_blocks: free_blocks_total,
            free_inodes: free_inodes_total as u32,
            inodes_per_group: ipg,
            uuid,
            hash_seed,
            label,
            time: self.options.timestamp as u32,
            journal_backup,
        };
        for g in (0..groups).filter(|&g| has_super(g)) {
            let block = g * BLOCKS_PER_GROUP;
            let offset = if g == 0 { 1024 } else { block * BLOCK_SIZE };
            self.image.write_raw(offset, &sb.encode(g as u16))?;
            self.image.write_blocks(block + 1, &gdt_buf)?;
        }
        self.image.set_len(total_blocks * BLOCK_SIZE)?;
        if let Some(e) = self.deferred.take() {
            return Err(e);
        }
        Ok(Summary {
            size_bytes: total_blocks * BLOCK_SIZE,
            block_count: total_blocks,
            blocks_used: total_blocks - free_blocks_total,
            inode_count: groups * u64::from(ipg),
            inodes_used: groups * u64::from(ipg) - free_inodes_total,
            uuid,
            hash_seed,
        })
    }

    /// Numbers the live tree breadth-first in name order: root 2, `lost+found` 11, the rest
    /// from 12. Hard-linked nodes get the number of their first name.
    fn number(&self) -> Result<Numbering, Error> {
        let nodes = &self.tree.nodes;
        let mut ino_of = vec![0u32; nodes.len()];
        let mut node_of: Vec<Option<NodeId>> = vec![None; FIRST_FREE_INO as usize];
        ino_of[ROOT.0 as usize] = ROOT_INO;
        node_of[ROOT_INO as usize] = Some(ROOT);
        let lpf = self
            .lookup(ROOT, b"lost+found")
            .filter(|&id| self.kind(id) == NodeKind::Directory);
        if let Some(id) = lpf {
            ino_of[id.0 as usize] = LOST_FOUND_INO;
            node_of[LOST_FOUND_INO as usize] = Some(id);
        }
        let mut queue = VecDeque::from([ROOT]);
        while let Some(dir) = queue.pop_front() {
            let Some(children) = self.tree.children(dir) else {
                continue;
            };
            for &child in children.values() {
                let is_dir = nodes[child.0 as usize].kind() == NodeKind::Directory;
                if Some(child) == lpf {
                    queue.push_back(child);
                    continue;
                }
                if ino_of[child.0 as usize] != 0 {
                    continue;
                }
                let ino = node_of.len() as u64;
                if ino >= u64::from(u32::MAX) {
                    return Err(Error::TooManyInodes {
                        count: ino,
                        limit: u64::from(u32::MAX),
                    });
                }
                ino_of[child.0 as usize] = ino as u32;
                node_of.push(Some(child));
                if is_dir {
                    queue.push_back(child);
                }
            }
        }
        Ok(Numbering { ino_of, node_of })
    }

    /// UUID and hash seed: from the options, or derived from a digest of the whole tree
    /// (names, metadata, contents' hashes, symlink targets) and the options.
    fn identity(&self, num: &Numbering) -> ([u8; 16], [u8; 16]) {
        let mut h = Xxh3::new();
        let o = &self.options;
        h.update(crate::WRITER_VERSION.as_bytes());
        h.update(&[u8::from(o.journal)]);
        h.update(&o.min_size_bytes.unwrap_or(0).to_le_bytes());
        h.update(&o.timestamp.to_le_bytes());
        h.update(o.label.as_deref().unwrap_or("").as_bytes());
        for (ino, id) in num.node_of.iter().enumerate() {
            let Some(id) = id else { continue };
            let node = &self.tree.nodes[id.0 as usize];
            let m = &node.meta;
            h.update(&(ino as u64).to_le_bytes());
            for v in [m.mode, m.uid, m.gid, node.links] {
                h.update(&v.to_le_bytes());
            }
            for t in [m.atime, m.mtime, m.ctime] {
                h.update(&t.secs.to_le_bytes());
                h.update(&t.nanos.to_le_bytes());
            }
            h.update(&(m.xattrs.len() as u64).to_le_bytes());
            for (k, v) in &m.xattrs {
                h.update(&(k.len() as u64).to_le_bytes());
                h.update(k);
                h.update(&(v.len() as u64).to_le_bytes());
                h.update(v);
            }
            match &node.body {
                Body::Dir(children) => {
                    h.update(b"d");
                    for (name, child) in children {
                        h.update(&[name.len() as u8]);
                        h.update(name);
                        h.update(&num.ino_of[child.0 as usize].to_le_bytes());
                    }
                }
                Body::File(data) => {
                    h.update(b"f");
                    h.update(&data.size.to_le_bytes());
                    h.update(&data.hash.to_le_bytes());
                }
                Body::Symlink(target, _) => {
                    h.update(b"l");
                    h.update(&(target.len() as u64).to_le_bytes());
                    h.update(target);
                }
            }
        }
        let digest = h.digest128().to_le_bytes();
        let derive = |tag: &[u8]| {
            let mut d = Xxh3::new();
            d.update(&digest);
            d.update(tag);
            d.digest128().to_le_bytes()
        };
        let uuid = o.uuid.unwrap_or_else(|| {
            let mut u = derive(b"uuid");
            u[6] = (u[6] & 0x0f) | 0x40;
            u[8] = (u[8] & 0x3f) | 0x80;
            u
        });
        let seed = o.hash_seed.unwrap_or_else(|| derive(b"hash_seed"));
        (uuid, seed)
    }

    /// The inode record of a node: writes directory blocks and extent-tree blocks as needed and
    /// collects the node's data runs into `data_runs`.
    fn inode_body(
        &mut self,
        id: NodeId,
        ino: u32,
        num: &Numbering,
        seed: &[u32; 4],
        data_runs: &mut Vec<Run>,
    ) -> Result<InodeRec, Error> {
        let node = &self.tree.nodes[id.0 as usize];
        let mut rec = InodeRec {
            file_type: 0,
            links: node.links.min(u32::from(u16::MAX)) as u16,
            size: 0,
            blocks: 0,
            flags: iflags::EXTENTS,
            i_block: [0u8; 60],
            file_acl: 0,
        };
        let extents: Vec<Extent> = match &node.body {
            Body::Dir(children) => {
                rec.file_type = mode::S_IFDIR;
                let nodes = &self.tree.nodes;
                let mut subdirs = 0u64;
                let entries: Vec<dir::Entry<'_>> = children
                    .iter()
                    .map(|(name, child)| {
                        let ftype = match nodes[child.0 as usize].kind() {
                            NodeKind::Directory => {
                                subdirs += 1;
                                ftype::DIR
                            }
                            NodeKind::File => ftype::REG,
                            NodeKind::Symlink => ftype::SYMLINK,
                        };
                        dir::Entry {
                            name,
                            ino: num.ino_of[child.0 as usize],
                            ftype,
                        }
                    })
                    .collect();
                let links = 2 + subdirs;
                rec.links = if links >= u64::from(LINK_MAX) {
                    1
                } else {
                    links as u16
                };
                let parent = if id == ROOT {
                    ROOT_INO
                } else {
                    num.ino_of[node.parent.0 as usize]
                };
                let min_blocks = if ino == LOST_FOUND_INO {
                    LOST_FOUND_BLOCKS
                } else {
                    1
                };
                let built =
                    dir::build(ino, parent, &entries, seed, min_blocks).map_err(|leaves| {
                        Error::DirectoryTooLarge {
                            path: self.tree.path(id),
                            blocks: leaves,
                            limit: MAX_LEAVES,
                        }
                    })?;
                drop(entries);
                if built.indexed {
                    rec.flags |= iflags::INDEX;
                }
                let n = built.blocks.len() as u64;
                let extents = alloc_extents(&mut self.alloc, n)?;
                let mut blocks = built.blocks.iter();
                for e in &extents {
                    for b in 0..u64::from(e.len) {
                        if let Some(block) = blocks.next() {
                            self.image.write_blocks(e.start + b, block)?;
                        }
                    }
                }
                rec.size = n * BLOCK_SIZE;
                extents
            }
            Body::File(data) => {
                rec.file_type = mode::S_IFREG;
                rec.size = data.size;
                data_runs.extend(data.runs());
                data.extents.clone()
            }
            Body::Symlink(target, data) => {
                rec.file_type = mode::S_IFLNK;
                rec.size = target.len() as u64;
                match data {
                    None => {
                        rec.flags = 0;
                        rec.i_block[..target.len()].copy_from_slice(target);
                        return Ok(rec);
                    }
                    Some(data) => {
                        data_runs.extend(data.runs());
                        data.extents.clone()
                    }
                }
            }
        };
        let (root, tree_blocks) = build_tree(&extents, &mut self.alloc, &self.image)?;
        rec.i_block = root;
        rec.blocks = extents.iter().map(|e| u64::from(e.len)).sum::<u64>() + tree_blocks;
        Ok(rec)
    }

    fn attrs_of(&self, num: &Numbering, ino: usize) -> Attrs {
        match num.node_of.get(ino).copied().flatten() {
            Some(id) => {
                let m = &self.tree.nodes[id.0 as usize].meta;
                Attrs {
                    perm: m.mode,
                    uid: m.uid,
                    gid: m.gid,
                    atime: m.atime,
                    mtime: m.mtime,
                    ctime: m.ctime,
                }
            }
            None => {
                let t = Timestamp::from_secs(self.options.timestamp);
                Attrs {
                    perm: 0o600,
                    uid: 0,
                    gid: 0,
                    atime: t,
                    mtime: t,
                    ctime: t,
                }
            }
        }
    }

    /// Allocates and writes the journal; returns its inode and the superblock's backup of it.
    fn write_journal(
        &mut self,
        blocks: u64,
        uuid: &[u8; 16],
    ) -> Result<(InodeRec, [u32; 17]), Error> {
        let extents = alloc_extents(&mut self.alloc, blocks)?;
        if let Some(first) = extents.first() {
            self.image
                .write_blocks(first.start, &journal::superblock(blocks, uuid))?;
        }
        let (root, tree_blocks) = build_tree(&extents, &mut self.alloc, &self.image)?;
        let size = blocks * BLOCK_SIZE;
        let mut backup = [0u32; 17];
        for (i, w) in backup.iter_mut().take(15).enumerate() {
            *w = crate::bytes::get32(&root, 4 * i);
        }
        backup[15] = (size >> 32) as u32;
        backup[16] = size as u32;
        Ok((
            InodeRec {
                file_type: mode::S_IFREG,
                links: 1,
                size,
                blocks: blocks + tree_blocks,
                flags: iflags::EXTENTS,
                i_block: root,
                file_acl: 0,
            },
            backup,
        ))
    }

    /// Chooses the number of groups, inodes per group and journal size.
    fn plan(&self, last_ino: u64) -> Result<Plan, Error> {
        let cursor = self.alloc.cursor();
        let min_blocks = self
            .options
            .min_size_bytes
            .map_or(0, |b| b.div_ceil(BLOCK_SIZE));
        let headroom = |used: u64| (used / 5).max(MIN_HEADROOM_BLOCKS);
        let mut groups = (cursor + headroom(cursor))
            .max(min_blocks)
            .div_ceil(BLOCKS_PER_GROUP)
            .max(1);
        loop {
            if groups > MAX_GROUPS {
                return Err(Error::ImageTooLarge {
                    needed_bytes: groups * BLOCKS_PER_GROUP * BLOCK_SIZE,
                    limit_bytes: MAX_GROUPS * BLOCKS_PER_GROUP * BLOCK_SIZE,
                });
            }
            let total = groups * BLOCKS_PER_GROUP;
            let wanted = (total * BLOCK_SIZE / inode_ratio(total * BLOCK_SIZE))
                .max(last_ino + last_ino / 4 + 64);
            let ipg = wanted.div_ceil(groups).next_multiple_of(INODES_PER_BLOCK);
            if ipg > BLOCKS_PER_GROUP {
                groups = wanted.div_ceil(BLOCKS_PER_GROUP).max(groups + 1);
                continue;
            }
            let journal_blocks = if self.options.journal {
                journal::default_blocks(total)
            } else {
                0
            };
            // Simulate the allocations finish makes (journal plus one spare tree block,
            // bitmaps, inode tables) to find where they end.
            let mut c = cursor;
            let mut left = journal_blocks + u64::from(self.options.journal);
            while left > 0 {
                let (s, n) = place(c, left, false);
                c = s + n;
                left -= n;
            }
            for _ in 0..2 * groups {
                let (s, n) = place(c, 1, false);
                c = s + n;
            }
            for _ in 0..groups {
                let (s, n) = place(c, ipg / INODES_PER_BLOCK, true);
                c = s + n;
            }
            let need = (c + headroom(c)).max(min_blocks);
            if need <= total {
                return Ok(Plan {
                    groups,
                    inodes_per_group: ipg as u32,
                    journal_blocks,
                });
            }
            groups = need.div_ceil(BLOCKS_PER_GROUP).max(groups + 1);
        }
    }
}

/// Bytes of image per inode: mke2fs's ratios (`small` below 512 MiB, `default` above), so a
/// guest that creates many small files runs out of blocks before inodes.
fn inode_ratio(image_bytes: u64) -> u64 {
    if image_bytes < 512 << 20 {
        SMALL_INODE_RATIO
    } else {
        INODE_RATIO
    }
}

/// The image's geometry.
struct Plan {
    groups: u64,
    inodes_per_group: u32,
    journal_blocks: u64,
}
