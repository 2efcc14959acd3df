//! Randomised trees: every image passes `e2fsck -fn` and debugfs shows exactly the input.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Read;
use std::path::Path;

use common::fsck;
use nullspace_ext4::{Metadata, NodeId, NodeKind, Options, Timestamp, Writer};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Expected file contents, generated on the fly.
#[derive(Clone, Copy, Debug)]
enum Content {
    Pattern { seed: u64, len: u64 },
    Zero { len: u64 },
}

struct ContentReader {
    content: Content,
    pos: u64,
    state: u64,
}

impl ContentReader {
    fn new(content: Content) -> Self {
        let seed = match content {
            Content::Pattern { seed, .. } => seed,
            Content::Zero { .. } => 0,
        };
        ContentReader {
            content,
            pos: 0,
            state: seed | 1,
        }
    }
}

impl Read for ContentReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let len = match self.content {
            Content::Pattern { len, .. } | Content::Zero { len } => len,
        };
        let n = buf.len().min((len - self.pos) as usize);
        match self.content {
            Content::Zero { .. } => buf[..n].fill(0),
            Content::Pattern { .. } => {
                for b in &mut buf[..n] {
                    // xorshift; every 4 KiB block gets a zero run sometimes to exercise holes
                    self.state ^= self.state << 13;
                    self.state ^= self.state >> 7;
                    self.state ^= self.state << 17;
                    *b = if (self.pos / 4096) % 5 == 3 {
                        0
                    } else {
                        self.state as u8
                    };
                    self.pos += 1;
                }
                return Ok(n);
            }
        }
        self.pos += n as u64;
        Ok(n)
    }
}

fn read_all(content: Content) -> Vec<u8> {
    let mut v = Vec::new();
    ContentReader::new(content).read_to_end(&mut v).unwrap();
    v
}

const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-+=,@";

fn gen_name(rng: &mut StdRng) -> Vec<u8> {
    let len = match rng.gen_range(0..10) {
        0 => 255,
        1 => rng.gen_range(1..=255),
        _ => rng.gen_range(1..=12),
    };
    loop {
        let name: Vec<u8> = (0..len)
            .map(|_| {
                if rng.gen_ratio(1, 10) {
                    rng.gen_range(0x80..=0xff)
                } else {
                    ALPHABET[rng.gen_range(0..ALPHABET.len())]
                }
            })
            .collect();
        if name != b"." && name != b".." {
            return name;
        }
    }
}

fn gen_time(rng: &mut StdRng) -> Timestamp {
    Timestamp {
        // e2fsck flags 2310-04-04..2378 ("likely pre-1970"), so stay below it.
        secs: rng.gen_range(-(1i64 << 31)..3 * (1i64 << 32) - (1 << 31)),
        nanos: rng.gen_range(0..1_000_000_000),
    }
}

fn acl(rng: &mut StdRng) -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    let mut entry = |tag: u16, perm: u16, id: u32| {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&perm.to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
    };
    entry(0x01, 6, u32::MAX);
    entry(0x02, 4, rng.gen_range(1000..100_000));
    entry(0x04, 4, u32::MAX);
    entry(0x10, 6, u32::MAX);
    entry(0x20, 0, u32::MAX);
    v
}

fn gen_meta(rng: &mut StdRng, kind: NodeKind) -> Metadata {
    let mut xattrs = Vec::new();
    if rng.gen_ratio(1, 3) {
        let mut total = 0;
        for i in 0..rng.gen_range(1..4) {
            let name = match rng.gen_range(0..5) {
                0 => b"security.capability".to_vec(),
                1 => format!("trusted.t{i}").into_bytes(),
                2 if kind != NodeKind::Symlink => b"system.posix_acl_access".to_vec(),
                _ => format!("user.{}{i}", "n".repeat(rng.gen_range(1..40))).into_bytes(),
            };
            if xattrs.iter().any(|(n, _): &(Vec<u8>, Vec<u8>)| *n == name) {
                continue;
            }
            let value = if name.starts_with(b"system.") {
                acl(rng)
            } else {
                let len = [0usize, 1, 3, 10, 50, 200, 1000, 2500][rng.gen_range(0..8)];
                (0..len).map(|_| rng.gen()).collect()
            };
            total += value.len() + name.len() + 20;
            if total > 3900 {
                break;
            }
            xattrs.push((name, value));
        }
    }
    Metadata {
        mode: rng.gen::<u32>() & 0o7777,
        uid: [0, 1000, 65534, 65536, 70000, rng.gen()][rng.gen_range(0..6)],
        gid: [0, 100, 65535, 99999, rng.gen()][rng.gen_range(0..5)],
        atime: gen_time(rng),
        mtime: gen_time(rng),
        ctime: gen_time(rng),
        xattrs,
    }
}

fn gen_content(rng: &mut StdRng) -> Content {
    let len = match rng.gen_range(0..20) {
        0 => 0,
        1 => 1,
        2 => 4095,
        3 => 4096,
        4 => 4097,
        5 => {
            // around the 32768-block extent boundary, as zeros (cheap, sparse)
            return Content::Zero {
                len: 32768 * 4096 + rng.gen_range(0..3) * 4096 - 4096 + rng.gen_range(0..2),
            };
        }
        6..=9 => rng.gen_range(0..300_000),
        _ => rng.gen_range(0..20_000),
    };
    Content::Pattern {
        seed: rng.gen(),
        len,
    }
}

/// Picks a live directory by walking down from the root.
fn pick_dir(w: &Writer, rng: &mut StdRng) -> NodeId {
    let mut dir = w.root();
    loop {
        if !rng.gen_ratio(2, 3) {
            return dir;
        }
        let subdirs: Vec<NodeId> = w
            .entries(dir)
            .filter(|(_, id)| w.kind(*id) == NodeKind::Directory)
            .map(|(_, id)| id)
            .collect();
        if subdirs.is_empty() {
            return dir;
        }
        dir = subdirs[rng.gen_range(0..subdirs.len())];
    }
}

fn pick_entry(w: &Writer, rng: &mut StdRng) -> Option<(NodeId, Vec<u8>, NodeId)> {
    let dir = pick_dir(w, rng);
    let entries: Vec<(Vec<u8>, NodeId)> = w.entries(dir).map(|(n, id)| (n.to_vec(), id)).collect();
    if entries.is_empty() {
        return None;
    }
    let (name, id) = entries[rng.gen_range(0..entries.len())].clone();
    Some((dir, name, id))
}

fn free_name(w: &Writer, dir: NodeId, rng: &mut StdRng) -> Vec<u8> {
    loop {
        let n = gen_name(rng);
        if w.lookup(dir, &n).is_none() {
            return n;
        }
    }
}

fn build(w: &mut Writer, rng: &mut StdRng, ops: usize, contents: &mut HashMap<NodeId, Content>) {
    for _ in 0..ops {
        match rng.gen_range(0..20) {
            0..=3 => {
                let d = pick_dir(w, rng);
                let n = free_name(w, d, rng);
                let m = gen_meta(rng, NodeKind::Directory);
                w.create_dir(d, &n, m).unwrap();
            }
            4..=9 => {
                let d = pick_dir(w, rng);
                let n = free_name(w, d, rng);
                let c = gen_content(rng);
                let len = match c {
                    Content::Pattern { len, .. } | Content::Zero { len } => len,
                };
                let data = w.write_data(&mut ContentReader::new(c), len).unwrap();
                let m = gen_meta(rng, NodeKind::File);
                let id = w.create_file(d, &n, m, data).unwrap();
                contents.insert(id, c);
            }
            10..=11 => {
                let d = pick_dir(w, rng);
                let n = free_name(w, d, rng);
                let len = [1usize, 59, 60, 61, 200, 4095][rng.gen_range(0..6)];
                let target: Vec<u8> = (0..len).map(|_| rng.gen_range(1..=255)).collect();
                let m = gen_meta(rng, NodeKind::Symlink);
                w.create_symlink(d, &n, m, &target).unwrap();
            }
            12..=13 => {
                if let Some((_, _, id)) = pick_entry(w, rng) {
                    if w.kind(id) != NodeKind::Directory {
                        let d = pick_dir(w, rng);
                        let n = free_name(w, d, rng);
                        w.link(d, &n, id).unwrap();
                    }
                }
            }
            14..=15 => {
                if let Some((d, n, _)) = pick_entry(w, rng) {
                    if !(d == w.root() && n == b"lost+found") {
                        w.remove(d, &n).unwrap();
                    }
                }
            }
            16 => {
                // overwrite
                if let Some((d, n, id)) = pick_entry(w, rng) {
                    if w.kind(id) != NodeKind::Directory {
                        let c = Content::Pattern {
                            seed: rng.gen(),
                            len: rng.gen_range(0..10_000),
                        };
                        let Content::Pattern { len, .. } = c else {
                            unreachable!()
                        };
                        let data = w.write_data(&mut ContentReader::new(c), len).unwrap();
                        w.remove(d, &n).unwrap();
                        let m = gen_meta(rng, NodeKind::File);
                        let id = w.create_file(d, &n, m, data).unwrap();
                        contents.insert(id, c);
                    }
                }
            }
            17 => {
                if let Some((_, _, id)) = pick_entry(w, rng) {
                    let m = gen_meta(rng, w.kind(id));
                    w.set_metadata(id, m).unwrap();
                }
            }
            18 => {
                let c = gen_content(rng);
                if let Content::Pattern { len, .. } = c {
                    let data = w.write_data(&mut ContentReader::new(c), len).unwrap();
                    w.release(data);
                }
            }
            _ => {
                // deep nesting
                let mut d = pick_dir(w, rng);
                for _ in 0..rng.gen_range(1..60) {
                    let n = free_name(w, d, rng);
                    d = w
                        .create_dir(d, &n, gen_meta(rng, NodeKind::Directory))
                        .unwrap();
                }
            }
        }
    }
}

/// One node as expected in the image.
struct Expected {
    path: Vec<u8>,
    id: NodeId,
    links: u64,
}

fn time_hex(t: Timestamp) -> String {
    let lo = t.secs as i32;
    let epoch = ((t.secs - i64::from(lo)) >> 32) & 3;
    format!("0x{:08x}:{:08x}", lo as u32, epoch as u32 | (t.nanos << 2))
}

fn field<'a>(text: &'a str, key: &str) -> &'a str {
    let at = text
        .find(key)
        .unwrap_or_else(|| panic!("no {key} in {text}"))
        + key.len();
    text[at..].split_whitespace().next().unwrap()
}

fn verify(w: &Writer, img: &Path, contents: &HashMap<NodeId, Content>) {
    // Collect every path (hard links give several).
    let mut all: Vec<Expected> = Vec::new();
    let mut count: HashMap<NodeId, u64> = HashMap::new();
    let mut stack = vec![(b"".to_vec(), w.root())];
    while let Some((path, dir)) = stack.pop() {
        let mut subdirs = 0;
        for (name, id) in w.entries(dir) {
            let mut p = path.clone();
            p.push(b'/');
            p.extend_from_slice(name);
            *count.entry(id).or_default() += 1;
            if w.kind(id) == NodeKind::Directory {
                subdirs += 1;
                stack.push((p, id));
            } else {
                all.push(Expected {
                    path: p,
                    id,
                    links: 0,
                });
            }
        }
        let links = if 2 + subdirs >= 65000 { 1 } else { 2 + subdirs };
        all.push(Expected {
            path: if path.is_empty() { b"/".to_vec() } else { path },
            id: dir,
            links,
        });
    }
    for e in &mut all {
        if w.kind(e.id) != NodeKind::Directory {
            e.links = count[&e.id];
        }
    }
    let out = tempfile::tempdir().unwrap();
    let mut cmds: Vec<u8> = Vec::new();
    for (i, e) in all.iter().enumerate() {
        cmds.extend_from_slice(b"stat ");
        cmds.extend_from_slice(&e.path);
        cmds.push(b'\n');
        if w.kind(e.id) != NodeKind::Directory {
            cmds.extend_from_slice(b"dump ");
            cmds.extend_from_slice(&e.path);
            let _ = writeln!(unsafe_text(&mut cmds), " {}/{i}", out.path().display());
        }
        for (k, (name, _)) in w.metadata(e.id).xattrs.iter().enumerate() {
            let _ = write!(
                unsafe_text(&mut cmds),
                "ea_get -f {}/{i}.x{k} ",
                out.path().display()
            );
            cmds.extend_from_slice(&e.path);
            cmds.push(b' ');
            cmds.extend_from_slice(name);
            cmds.push(b'\n');
        }
        cmds.extend_from_slice(b"ea_list ");
        cmds.extend_from_slice(&e.path);
        cmds.push(b'\n');
    }
    let cmdfile = out.path().join("cmds");
    std::fs::write(&cmdfile, &cmds).unwrap();
    let res = std::process::Command::new("debugfs")
        .arg("-f")
        .arg(&cmdfile)
        .arg(img)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&res.stdout).into_owned();
    let stats: Vec<&str> = text.split("debugfs: stat ").skip(1).collect();
    assert_eq!(stats.len(), all.len(), "one stat per path");
    for (i, (e, stat)) in all.iter().zip(&stats).enumerate() {
        let m = w.metadata(e.id);
        let what = String::from_utf8_lossy(&e.path);
        let ctx = || format!("{what}:\n{stat}");
        assert!(stat.contains("Inode: "), "missing: {}", ctx());
        let kind = w.kind(e.id);
        let ty = match kind {
            NodeKind::Directory => "directory",
            NodeKind::File => "regular",
            NodeKind::Symlink => "symlink",
        };
        assert_eq!(field(stat, "Type: "), ty, "{}", ctx());
        assert_eq!(
            field(stat, "Mode: "),
            format!("0{:03o}", m.mode),
            "{}",
            ctx()
        );
        assert_eq!(
            field(stat, "User: "),
            (m.uid as i32).to_string(),
            "{}",
            ctx()
        );
        assert_eq!(
            field(stat, "Group: "),
            (m.gid as i32).to_string(),
            "{}",
            ctx()
        );
        assert_eq!(field(stat, "Links: "), e.links.to_string(), "{}", ctx());
        assert_eq!(field(stat, " atime: "), time_hex(m.atime), "{}", ctx());
        assert_eq!(field(stat, " mtime: "), time_hex(m.mtime), "{}", ctx());
        assert_eq!(field(stat, " ctime: "), time_hex(m.ctime), "{}", ctx());
        assert_eq!(field(stat, "crtime: "), time_hex(m.ctime), "{}", ctx());
        match kind {
            NodeKind::File => {
                let c = contents[&e.id];
                let got = std::fs::read(out.path().join(i.to_string())).unwrap();
                let want = read_all(c);
                assert_eq!(got.len(), want.len(), "{what}");
                assert!(got == want, "content of {what}");
            }
            NodeKind::Symlink => {
                let target = w.symlink_target(e.id).unwrap();
                assert_eq!(field(stat, "Size: "), target.len().to_string());
                if target.len() >= 60 {
                    let got = std::fs::read(out.path().join(i.to_string())).unwrap();
                    assert!(got == target, "target of {what}");
                } else {
                    assert!(stat.contains("Fast link dest:"), "{}", ctx());
                }
            }
            NodeKind::Directory => {}
        }
        for (k, (name, value)) in m.xattrs.iter().enumerate() {
            let value = if name.starts_with(b"system.posix_acl") {
                acl_on_disk(value)
            } else {
                value.clone()
            };
            let got = std::fs::read(out.path().join(format!("{i}.x{k}")))
                .unwrap_or_else(|_| panic!("xattr {k} of {what}: {}", ctx()));
            assert!(
                got == value,
                "xattr {k} {:?} of {what}: got {got:02x?} want {value:02x?}",
                String::from_utf8_lossy(name)
            );
        }
    }
}

/// The ACL as debugfs 1.47.0's `ea_get` gives it back: xattr format (version 2) with the id of
/// short entries (owner, group, mask, other) as 0.
fn acl_on_disk(v: &[u8]) -> Vec<u8> {
    let mut out = v.to_vec();
    for e in out[4..].chunks_mut(8) {
        let tag = u16::from_le_bytes([e[0], e[1]]);
        if tag != 2 && tag != 8 {
            e[4..].fill(0);
        }
    }
    out
}

/// `fmt::Write` over a byte vector (commands are mostly ASCII; names are appended as bytes).
fn unsafe_text(v: &mut Vec<u8>) -> ByteWriter<'_> {
    ByteWriter(v)
}

struct ByteWriter<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for ByteWriter<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

#[test]
fn random_trees() {
    let cases: u64 = std::env::var("EXT4_RANDOM_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let base: u64 = std::env::var("EXT4_RANDOM_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed);
    for case in 0..cases {
        let seed = base + case;
        eprintln!("case seed {seed}");
        // Build twice from the same seed: once to finish and check with e2fsck, once kept
        // open as the model that debugfs output is compared with.
        let mut rng = StdRng::seed_from_u64(seed);
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("img");
        let model_img = dir.path().join("model");
        let mut w =
            Writer::create(std::fs::File::create(&img).unwrap(), Options::default()).unwrap();
        let mut model = Writer::create(
            std::fs::File::create(&model_img).unwrap(),
            Options::default(),
        )
        .unwrap();
        let mut contents = HashMap::new();
        let mut model_contents = HashMap::new();
        let root_meta = gen_meta(&mut rng, NodeKind::Directory);
        w.set_metadata(w.root(), root_meta.clone()).unwrap();
        model.set_metadata(model.root(), root_meta).unwrap();
        let mut rng2 = rng.clone();
        build(&mut w, &mut rng, 250, &mut contents);
        build(&mut model, &mut rng2, 250, &mut model_contents);
        w.finish().unwrap();
        fsck(&img);
        verify(&model, &img, &model_contents);
    }
}
