//! Benchmark: this writer fed from a tar vs `mke2fs -d` vs `tar -x`.
//!
//! ```text
//! cargo run --release -p nullspace-ext4 --example bench_tar -- [TOTAL_MB] [ENTRIES] [WORKDIR]
//! ```
//!
//! Defaults: 1000 MB in 50,000 entries under a fresh temporary directory. It generates the tar
//! deterministically, then times (a) `Writer` fed by the `tar` crate, (b) `tar -xf` of the same
//! tar to disk, (c) `mke2fs -F -q -t ext4 -d DIR` of that extracted tree, and prints the
//! ratios. Both images are checked with `e2fsck -fn`. Caches are warm for all three.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nullspace_ext4::{Metadata, NodeId, Options, Timestamp, Writer};

type BoxError = Box<dyn std::error::Error>;

/// Cheap deterministic bytes: xorshift words.
struct Bytes {
    state: u64,
    left: u64,
}

impl Read for Bytes {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.left as usize) / 8 * 8;
        let n = if n == 0 {
            buf.len().min(self.left as usize)
        } else {
            n
        };
        for chunk in buf[..n].chunks_mut(8) {
            self.state ^= self.state << 13;
            self.state ^= self.state >> 7;
            self.state ^= self.state << 17;
            let w = self.state.to_le_bytes();
            chunk.copy_from_slice(&w[..chunk.len()]);
        }
        self.left -= n as u64;
        Ok(n)
    }
}

fn generate(path: &Path, total: u64, entries: u64) -> Result<(), BoxError> {
    let mut b = tar::Builder::new(BufWriter::with_capacity(1 << 20, File::create(path)?));
    let dirs = (entries / 50).max(1);
    let files = entries - dirs;
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let header = |kind: tar::EntryType, mode: u32, size: u64| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(1000);
        h.set_gid(1000);
        h.set_mtime(1_700_000_000);
        h.set_size(size);
        h
    };
    for d in 0..dirs {
        let mut h = header(tar::EntryType::Directory, 0o755, 0);
        b.append_data(&mut h, format!("d{:03}/s{d}/", d % 100), std::io::empty())?;
    }
    // Sizes: most files small, a few large; scaled so the total is about `total`.
    let mut sizes: Vec<u64> = (0..files)
        .map(|i| {
            let r = next();
            if i % 100 == 0 {
                r % (4 << 20)
            } else {
                r % 32768
            }
        })
        .collect();
    let sum: u64 = sizes.iter().sum();
    for s in &mut sizes {
        *s = (*s as u128 * total as u128 / sum.max(1) as u128) as u64;
    }
    for (i, size) in sizes.into_iter().enumerate() {
        let d = i as u64 % dirs;
        let mut h = header(tar::EntryType::Regular, 0o644, size);
        let reader = Bytes {
            state: next() | 1,
            left: size,
        };
        b.append_data(&mut h, format!("d{:03}/s{d}/f{i}", d % 100), reader)?;
    }
    b.into_inner()?;
    Ok(())
}

fn ours(tar_path: &Path, img: &Path) -> Result<(), BoxError> {
    let mut w = Writer::create(File::create(img)?, Options::default())?;
    let mut dirs: HashMap<PathBuf, NodeId> = HashMap::new();
    let mut archive = tar::Archive::new(BufReader::with_capacity(1 << 20, File::open(tar_path)?));
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.into_owned();
        let h = entry.header();
        let meta = Metadata {
            mode: h.mode()?,
            uid: h.uid()? as u32,
            gid: h.gid()? as u32,
            atime: Timestamp::from_secs(h.mtime()? as i64),
            mtime: Timestamp::from_secs(h.mtime()? as i64),
            ctime: Timestamp::from_secs(h.mtime()? as i64),
            xattrs: Vec::new(),
        };
        let kind = h.entry_type();
        let size = h.size()?;
        // Find (or create) the parent.
        let mut parent = w.root();
        let mut so_far = PathBuf::new();
        let comps: Vec<_> = path.components().collect();
        let (last, init) = comps.split_last().ok_or("empty path")?;
        for c in init {
            so_far.push(c);
            parent = match dirs.get(&so_far) {
                Some(id) => *id,
                None => {
                    let name = c.as_os_str().as_encoded_bytes();
                    let id = match w.lookup(parent, name) {
                        Some(id) => id,
                        None => w.create_dir(parent, name, Metadata::with_mode(0o755))?,
                    };
                    dirs.insert(so_far.clone(), id);
                    id
                }
            };
        }
        let name = last.as_os_str().as_encoded_bytes();
        if kind.is_dir() {
            let id = match w.lookup(parent, name) {
                Some(id) => {
                    w.set_metadata(id, meta)?;
                    id
                }
                None => w.create_dir(parent, name, meta)?,
            };
            dirs.insert(path.clone(), id);
        } else if kind.is_file() {
            let data = w.write_data(&mut entry, size)?;
            w.create_file(parent, name, meta, data)?;
        }
    }
    w.finish()?;
    Ok(())
}

fn run(cmd: &mut Command) -> Result<(), BoxError> {
    let out = cmd.output()?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(())
}

fn timed(f: impl FnOnce() -> Result<(), BoxError>) -> Result<Duration, BoxError> {
    let t = Instant::now();
    f()?;
    Ok(t.elapsed())
}

fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().collect();
    let total_mb: u64 = args.get(1).map_or(Ok(1000), |s| s.parse())?;
    let entries: u64 = args.get(2).map_or(Ok(50_000), |s| s.parse())?;
    let tmp = tempfile::tempdir()?;
    let work = args.get(3).map_or(tmp.path().to_path_buf(), PathBuf::from);
    std::fs::create_dir_all(&work)?;
    let tar_path = work.join("tree.tar");
    let t = timed(|| generate(&tar_path, total_mb << 20, entries))?;
    let tar_size = std::fs::metadata(&tar_path)?.len();
    println!("generated {tar_size} byte tar with {entries} entries in {t:.2?}");

    let img = work.join("ours.ext4");
    let t_ours = timed(|| ours(&tar_path, &img))?;
    let extract = work.join("tree");
    std::fs::create_dir_all(&extract)?;
    let t_tar = timed(|| {
        run(Command::new("tar")
            .arg("-xf")
            .arg(&tar_path)
            .arg("-C")
            .arg(&extract))
    })?;
    let mke2fs_img = work.join("mke2fs.ext4");
    let size_mb = format!("{}M", total_mb * 3 / 2 + 256);
    let t_mke2fs = timed(|| {
        run(Command::new("mke2fs")
            .args(["-F", "-q", "-t", "ext4", "-d"])
            .arg(&extract)
            .arg(&mke2fs_img)
            .arg(&size_mb))
    })?;
    run(Command::new("e2fsck").arg("-fn").arg(&img))?;
    run(Command::new("e2fsck").arg("-fn").arg(&mke2fs_img))?;
    let s = |d: Duration| d.as_secs_f64();
    println!("(a) nullspace-ext4 from tar: {:8.2} s", s(t_ours));
    println!("(b) mke2fs -d:               {:8.2} s", s(t_mke2fs));
    println!("(c) tar -xf:                 {:8.2} s", s(t_tar));
    println!(
        "ratios: mke2fs/ours = {:.2}, tar-x/ours = {:.2}, (tar-x + mke2fs)/ours = {:.2}",
        s(t_mke2fs) / s(t_ours),
        s(t_tar) / s(t_ours),
        (s(t_tar) + s(t_mke2fs)) / s(t_ours)
    );
    Ok(())
}
