//! The initramfs: our agent as `/init`, the kernel modules boot needs (resolved with their
//! dependencies from `modules.dep`, in load order) and the few nodes PID 1 needs, as a `newc`
//! cpio archive written here (deterministic: same inputs, same bytes), cached by content digest.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{io_at, VmError};
use crate::kernel::GuestKernel;

/// Modules the VM needs (ext4 is built into Debian's kernels): the virtio transport, the disk,
/// the agent's serial port and the network card.
pub const BOOT_MODULES: &[&str] = &["virtio_mmio", "virtio_blk", "virtio_console", "virtio_net"];

/// The agent binary embedded at build time (see `build.rs`).
pub static AGENT: &[u8] = include_bytes!(env!("NULLSPACE_AGENT_PATH"));

/// `sha256:` digest of [`AGENT`].
pub fn agent_digest() -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(AGENT)))
}

/// A built initramfs.
#[derive(Clone, Debug)]
pub struct Initramfs {
    /// The cached file.
    pub path: PathBuf,
    /// `sha256:` digest of its bytes.
    pub digest: String,
}

/// Module paths (relative to the modules dir) for `wanted`, dependencies first.
pub fn resolve_modules(modules_dep: &str, wanted: &[&str]) -> Result<Vec<String>, VmError> {
    let mut deps: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut by_name: BTreeMap<String, String> = BTreeMap::new();
    for line in modules_dep.lines() {
        let Some((module, list)) = line.split_once(':') else {
            continue;
        };
        let module = module.trim().to_string();
        by_name.insert(module_name(&module), module.clone());
        deps.insert(
            module,
            list.split_whitespace().map(str::to_string).collect(),
        );
    }
    let mut order = Vec::new();
    let mut seen = HashSet::new();
    fn visit(
        module: &str,
        deps: &BTreeMap<String, Vec<String>>,
        seen: &mut HashSet<String>,
        order: &mut Vec<String>,
    ) {
        if !seen.insert(module.to_string()) {
            return;
        }
        // modules.dep lists what a module needs with the most basic last: load that first.
        for dep in deps.get(module).into_iter().flatten().rev() {
            visit(dep, deps, seen, order);
        }
        order.push(module.to_string());
    }
    for name in wanted {
        let module = by_name
            .get(*name)
            .ok_or_else(|| VmError::ModuleMissing((*name).to_string()))?;
        visit(module, &deps, &mut seen, &mut order);
    }
    Ok(order)
}

/// `kernel/drivers/block/virtio_blk.ko[.zst]` → `virtio_blk`.
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

/// A `newc` cpio archive in memory.
#[derive(Default)]
pub struct Cpio {
    bytes: Vec<u8>,
    next_inode: u32,
}

impl Cpio {
    fn header(&mut self, name: &str, mode: u32, size: usize, rdev: (u32, u32)) {
        self.next_inode += 1;
        let fields = [
            self.next_inode,
            mode,
            0,
            0,
            if mode & 0o170000 == 0o040000 { 2 } else { 1 },
            0,
            size as u32,
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0,
        ];
        self.bytes.extend_from_slice(b"070701");
        for field in fields {
            self.bytes
                .extend_from_slice(format!("{field:08x}").as_bytes());
        }
        self.bytes.extend_from_slice(name.as_bytes());
        self.bytes.push(0);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.bytes.len().is_multiple_of(4) {
            self.bytes.push(0);
        }
    }

    /// A directory.
    pub fn dir(&mut self, name: &str) {
        self.header(name, 0o040755, 0, (0, 0));
    }

    /// A regular file.
    pub fn file(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.header(name, 0o100000 | mode, data.len(), (0, 0));
        self.bytes.extend_from_slice(data);
        self.pad();
    }

    /// A character device.
    pub fn char_device(&mut self, name: &str, mode: u32, major: u32, minor: u32) {
        self.header(name, 0o020000 | mode, 0, (major, minor));
    }

    /// The archive with its trailer.
    pub fn finish(mut self) -> Vec<u8> {
        self.header("TRAILER!!!", 0, 0, (0, 0));
        while !self.bytes.len().is_multiple_of(512) {
            self.bytes.push(0);
        }
        self.bytes
    }
}

fn read_module(path: &Path) -> Result<Vec<u8>, VmError> {
    let bytes = std::fs::read(path).map_err(io_at(path))?;
    let name = path.to_string_lossy();
    if name.ends_with(".ko") {
        Ok(bytes)
    } else if name.ends_with(".ko.zst") {
        zstd::decode_all(&bytes[..]).map_err(io_at(path))
    } else {
        Err(VmError::KernelMissing {
            dir: path.to_path_buf(),
            what: "a module compression other than none or zstd".into(),
        })
    }
}

/// The initramfs bytes for `kernel` and `agent`.
pub fn build(kernel: &GuestKernel, agent: &[u8]) -> Result<Vec<u8>, VmError> {
    let dep_path = kernel.modules.join("modules.dep");
    let modules_dep = std::fs::read_to_string(&dep_path).map_err(io_at(&dep_path))?;
    let modules = resolve_modules(&modules_dep, BOOT_MODULES)?;
    let mut cpio = Cpio::default();
    for dir in [
        "dev",
        "proc",
        "sys",
        "newroot",
        "nullspace",
        "lib",
        "lib/modules",
    ] {
        cpio.dir(dir);
    }
    cpio.char_device("dev/console", 0o600, 5, 1);
    cpio.char_device("dev/null", 0o666, 1, 3);
    cpio.file("init", 0o755, agent);
    let mut list = String::new();
    for module in &modules {
        let data = read_module(&kernel.modules.join(module))?;
        let name = format!("lib/modules/{}.ko", module_name(module));
        cpio.file(&name, 0o644, &data);
        list.push_str(&format!("/{name}\n"));
    }
    cpio.file("nullspace/modules", 0o644, list.as_bytes());
    Ok(cpio.finish())
}

/// The initramfs for `kernel` with the embedded agent, from `cache_dir` when it is there.
pub fn cached(kernel: &GuestKernel, cache_dir: &Path) -> Result<Initramfs, VmError> {
    let bytes = build(kernel, AGENT)?;
    let hex = hex::encode(Sha256::digest(&bytes));
    let path = cache_dir.join(format!("initramfs-{hex}.cpio"));
    if !path.is_file() {
        std::fs::create_dir_all(cache_dir).map_err(io_at(cache_dir))?;
        let temporary = cache_dir.join(format!(".initramfs-{hex}.{}", std::process::id()));
        std::fs::write(&temporary, &bytes).map_err(io_at(&temporary))?;
        std::fs::rename(&temporary, &path).map_err(io_at(&path))?;
    }
    Ok(Initramfs {
        path,
        digest: format!("sha256:{hex}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modules_come_with_their_dependencies_first() {
        let dep = "kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko\n\
            kernel/drivers/virtio/virtio_ring.ko:\n\
            kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko\n\
            kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko\n\
            kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko\n\
            kernel/net/core/failover.ko:\n";
        let order = resolve_modules(dep, &["virtio_blk", "virtio_net"]).unwrap();
        let names: Vec<String> = order.iter().map(|m| module_name(m)).collect();
        assert_eq!(
            names,
            [
                "virtio_ring",
                "virtio",
                "virtio_blk",
                "failover",
                "net_failover",
                "virtio_net"
            ]
        );
        assert!(matches!(
            resolve_modules(dep, &["virtio_console"]),
            Err(VmError::ModuleMissing(name)) if name == "virtio_console"
        ));
    }

    #[test]
    fn cpio_entries_are_newc_aligned_and_end_with_a_trailer() {
        let mut cpio = Cpio::default();
        cpio.dir("dev");
        cpio.file("init", 0o755, b"abc");
        let bytes = cpio.finish();
        assert_eq!(&bytes[..6], b"070701");
        assert_eq!(bytes.len() % 512, 0);
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains("init\0"));
        assert!(text.contains("TRAILER!!!\0"));
        // The file's data starts 4-aligned right after its padded name.
        let at = text.find("init\0").unwrap();
        let data = (at + 5).next_multiple_of(4);
        assert_eq!(&bytes[data..data + 3], b"abc");
    }
}
