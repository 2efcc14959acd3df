//! Nullspace microVMs: the guest kernel and the initramfs that carries our agent, the QEMU
//! driver (boot, snapshot, restore), the host end of the agent channel and the machine
//! description a restore must match.
//!
//! The [`Vmm`] trait is what the build and sandboxes use; QEMU is its one driver here. A
//! Firecracker driver would implement the same trait where a Firecracker binary can be tested.

pub mod channel;
pub mod error;
pub mod initramfs;
pub mod kernel;
pub mod machine;
pub mod network;
pub mod qemu;
pub mod qmp;
pub mod running;

pub use error::VmError;
pub use machine::{Accel, MachineDescription, MachineSize};
pub use qemu::{AccelChoice, BootSpec, Disk, Qemu};
pub use running::RunningVm;

/// A virtual machine monitor: boots a guest until its agent answers, restores a snapshot.
#[allow(async_fn_in_trait)]
pub trait Vmm {
    /// A running guest.
    type Vm;
    /// Boots `spec`.
    async fn boot(&self, spec: &BootSpec) -> Result<Self::Vm, VmError>;
    /// Restores the snapshot in `snapshot_dir` onto `disk`.
    async fn restore(
        &self,
        snapshot_dir: &std::path::Path,
        disk: Disk,
    ) -> Result<Self::Vm, VmError>;
}

impl Vmm for Qemu {
    type Vm = RunningVm;
    async fn boot(&self, spec: &BootSpec) -> Result<RunningVm, VmError> {
        Qemu::boot(self, spec).await
    }
    async fn restore(
        &self,
        snapshot_dir: &std::path::Path,
        disk: Disk,
    ) -> Result<RunningVm, VmError> {
        Qemu::restore(self, snapshot_dir, disk).await
    }
}
