//! Errors of the VM layer: each names what is missing or what failed, and where.

use std::path::{Path, PathBuf};

/// What can go wrong finding, booting, snapshotting or restoring a VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// No usable guest kernel.
    #[error("no guest kernel in {dir}: {what}; set NULLSPACE_KERNEL to an unpacked Debian kernel package (boot/vmlinuz-*, lib/modules/*/modules.dep) or put one in the data dir's kernel/ (scripts/devenv up provides one)")]
    KernelMissing {
        /// Where it was looked for.
        dir: PathBuf,
        /// What was missing.
        what: String,
    },
    /// A module boot needs is not in the kernel's `modules.dep`.
    #[error("guest kernel: module {0} is not in modules.dep")]
    ModuleMissing(String),
    /// No QEMU binary.
    #[error("no VM runtime: {binary} was not found or does not run ({reason}); install qemu-system-x86 (QEMU 10, scripts/devenv up) or set NULLSPACE_QEMU")]
    QemuMissing {
        /// The binary looked for.
        binary: String,
        /// Why it does not work.
        reason: String,
    },
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The VM did not come up.
    #[error("the VM did not boot ({reason}) after {attempts} attempt(s); last console lines:\n{console}")]
    BootFailed {
        /// Why the last attempt failed.
        reason: String,
        /// Attempts made.
        attempts: u32,
        /// The end of the guest console.
        console: String,
    },
    /// QEMU's monitor refused or failed a command.
    #[error("QEMU monitor: {0}")]
    Qmp(String),
    /// The agent channel failed or the agent said something out of protocol.
    #[error("guest agent: {0}")]
    Agent(String),
    /// Something took longer than its bound.
    #[error("{what} did not finish within {seconds} s")]
    TimedOut {
        /// What.
        what: String,
        /// The bound.
        seconds: u64,
    },
    /// A snapshot cannot be restored on this host as it is.
    #[error("snapshot cannot be restored here: {0}; rebuild the template")]
    RebuildRequired(String),
}

impl VmError {
    /// Stable error code for the API.
    pub fn code(&self) -> &'static str {
        match self {
            VmError::KernelMissing { .. }
            | VmError::ModuleMissing(_)
            | VmError::QemuMissing { .. } => "vm_unavailable",
            VmError::RebuildRequired(_) => "rebuild_required",
            VmError::TimedOut { .. } => "vm_timeout",
            _ => "vm_failed",
        }
    }
}

/// Maps an I/O error at `path`.
pub(crate) fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> VmError + '_ {
    move |source| VmError::Io {
        path: path.to_path_buf(),
        source,
    }
}
