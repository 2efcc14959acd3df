//! The machine a snapshot was taken on, recorded beside it (`snapshot/machine.json`): a restore
//! must run the same QEMU with the same machine, or it is refused with `rebuild_required`.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{io_at, VmError};

/// File names inside a snapshot dir.
pub mod files {
    /// Guest RAM (sparse; mapped copy-on-write by restores).
    pub const MEMORY: &str = "memory";
    /// Device and CPU state.
    pub const STATE: &str = "state";
    /// [`super::MachineDescription`].
    pub const MACHINE: &str = "machine.json";
    /// The kernel the guest booted (restores need the same boot ROM contents).
    pub const KERNEL: &str = "vmlinuz";
    /// The initramfs it booted.
    pub const INITRAMFS: &str = "initramfs.cpio";
}

/// CPU acceleration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Accel {
    /// Hardware virtualization.
    Kvm,
    /// QEMU's software emulation.
    Tcg,
}

impl Accel {
    /// QEMU's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// Size of a VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineSize {
    /// vCPUs.
    pub cpu_count: u32,
    /// Guest RAM in MiB.
    pub memory_mb: u32,
}

/// Everything a restore must match, as recorded at the snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineDescription {
    /// `qemu`.
    pub vmm: String,
    /// `qemu-system-x86_64 --version`'s first line.
    pub vmm_version: String,
    /// Acceleration used.
    pub accel: Accel,
    /// QEMU's `-M` value.
    pub machine: String,
    /// QEMU's `-cpu` value.
    pub cpu_model: String,
    /// Size.
    pub size: MachineSize,
    /// Kernel release.
    pub kernel_release: String,
    /// `sha256:` of the kernel image.
    pub kernel_digest: String,
    /// `sha256:` of the initramfs.
    pub initramfs_digest: String,
    /// Kernel command line.
    pub kernel_cmdline: String,
    /// The agent's version.
    pub agent_version: String,
    /// The VM's network card, if it has one (a restore gets a new passt with it).
    pub network: Option<crate::network::GuestNetwork>,
    /// Allocated bytes of the memory file (what it costs on disk).
    pub memory_allocated_bytes: u64,
    /// Bytes of the state file.
    pub state_bytes: u64,
}

impl MachineDescription {
    /// Reads `machine.json` of a snapshot dir.
    pub fn read(snapshot_dir: &Path) -> Result<MachineDescription, VmError> {
        let path = snapshot_dir.join(files::MACHINE);
        let bytes = std::fs::read(&path).map_err(io_at(&path))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| VmError::RebuildRequired(format!("{}: {e}", path.display())))
    }

    /// Writes `machine.json` into a snapshot dir.
    pub fn write(&self, snapshot_dir: &Path) -> Result<(), VmError> {
        let path = snapshot_dir.join(files::MACHINE);
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| VmError::Agent(e.to_string()))?;
        std::fs::write(&path, bytes).map_err(io_at(&path))
    }
}

/// Allocated bytes of a (sparse) file.
pub fn allocated_bytes(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).map_or(0, |m| m.blocks() * 512)
}
