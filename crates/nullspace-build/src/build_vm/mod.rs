//! The build VM: the template's rootfs booted under our agent, the start command started with
//! the runtime defaults, its readiness waited for, then a snapshot of the running, ready VM
//! (spec §4.6). Phases and their failures: `vm_create` (boot), `startup` (the command cannot
//! start or exits before it is ready), `readiness` (the probe fails or never passes), `snapshot`.
//! The VM is torn down on every path: dropping the running VM kills QEMU.
//!
//! Defaults the spec leaves open: 1 vCPU and 512 MiB ([`DEFAULT_CPU_COUNT`],
//! [`DEFAULT_MEMORY_MB`]); without a readiness probe, the start command has
//! [`SETTLE_MS`] to settle (an exit with status 0 is fine and warned about, another status fails).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use nullspace_api::{LogLevel, LogPhase};
use nullspace_init::protocol::{
    truncate_line, AgentMessage, HostMessage, Probe, ProbeCheck, StartState, Stream,
    MAX_LOG_LINE_BYTES,
};
use nullspace_rootfs::runtime::{Readiness, RuntimeDefaults};
use nullspace_vm::initramfs::{self, Initramfs};
use nullspace_vm::kernel::GuestKernel;
use nullspace_vm::machine::{allocated_bytes, files, MachineDescription, MachineSize};
use nullspace_vm::network::GuestNetwork;
use nullspace_vm::{BootSpec, Disk, Qemu, RunningVm, VmError};

use crate::error::BuildError;

mod cache;
mod run;

pub use cache::cache_index;
pub(crate) use cache::snapshot_stage;
pub use run::run;

/// vCPUs of the build VM (and of sandboxes from it) unless the request says.
pub const DEFAULT_CPU_COUNT: u32 = 1;
/// Guest RAM in MiB unless the request says.
pub const DEFAULT_MEMORY_MB: u32 = 512;
/// Largest `cpu_count`.
pub const MAX_CPU_COUNT: u32 = 16;
/// `memory_mb` bounds.
pub const MEMORY_MB_RANGE: std::ops::RangeInclusive<u32> = 128..=65536;
/// Without a readiness probe: how long the start command may settle before the snapshot.
pub const SETTLE_MS: u64 = 2_000;
/// Lines of the start command's output and readiness results kept in the build log; the
/// rest is counted.
pub const MAX_LOGGED_LINES: usize = 5_000;
/// Lines of output quoted in a startup or readiness error.
const OUTPUT_TAIL: usize = 20;
/// Extra time beyond the probe's own budget before the build stops waiting.
const PROBE_SLACK: Duration = Duration::from_secs(30);
/// Said when a template gets no VM snapshot.
pub const ROOTFS_ONLY_WARNING: &str = "rootfs-only template (snapshot: null): it has no start command or readiness, so no build VM ran";

/// Directory of the snapshot inside an artifact.
pub const SNAPSHOT_DIR: &str = "snapshot";

/// The snapshot of an artifact, as recorded in `template.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    /// Its dir inside the artifact (`snapshot`).
    pub path: String,
    /// The machine a restore must match.
    pub machine: MachineDescription,
    /// The start command's state at the snapshot (its pid and start time when running).
    pub start: StartState,
    /// Key of the snapshot cache (everything that changes the snapshot).
    pub cache_key: String,
    /// Milliseconds from QEMU's start to the agent's hello.
    pub boot_ms: u64,
    /// Milliseconds from the start command's start to ready (or settled).
    pub ready_ms: u64,
    /// Milliseconds the snapshot took.
    pub snapshot_ms: u64,
}

/// A VM runtime that works here: QEMU, the guest kernel and our initramfs.
pub struct VmRuntime {
    qemu: Qemu,
    kernel: GuestKernel,
    kernel_digest: String,
    initramfs: Initramfs,
}

/// Where the VM runtime comes from.
#[derive(Clone, Debug, Default)]
pub struct VmConfig {
    /// The unpacked kernel package; `<data>/kernel` when `None`.
    pub kernel_dir: Option<PathBuf>,
    /// The QEMU binary; `qemu-system-x86_64` on `PATH` when `None`.
    pub qemu: Option<PathBuf>,
    /// KVM, TCG or the first that works.
    pub accel: Option<nullspace_vm::AccelChoice>,
}

impl VmRuntime {
    /// Finds QEMU and the kernel and builds (or finds) the initramfs in `<data>/vm`.
    pub fn detect(config: &VmConfig, data_root: &Path) -> Result<VmRuntime, VmError> {
        let qemu = Qemu::locate(
            config.qemu.clone(),
            config.accel.unwrap_or(nullspace_vm::AccelChoice::Auto),
        )?
        .remember_kvm_in(data_root.join("vm/kvm-verdict"));
        let kernel_dir = config
            .kernel_dir
            .clone()
            .unwrap_or_else(|| data_root.join("kernel"));
        let kernel = GuestKernel::find(&kernel_dir)?;
        let kernel_digest = kernel.digest()?;
        let initramfs = initramfs::cached(&kernel, &data_root.join("vm"))?;
        Ok(VmRuntime {
            qemu,
            kernel,
            kernel_digest,
            initramfs,
        })
    }

    /// QEMU.
    pub fn qemu(&self) -> &Qemu {
        &self.qemu
    }

    /// The guest kernel image and our initramfs (what a cold boot needs).
    pub fn boot_files(&self) -> (PathBuf, PathBuf) {
        (self.kernel.image.clone(), self.initramfs.path.clone())
    }
}

/// The agent's `Start` for a template: its runtime defaults, start command and probe, and
/// the guest network when it has one.
pub fn start_spec(
    hostname: &str,
    runtime: &nullspace_rootfs::runtime::RuntimeDefaults,
    readiness: Option<Probe>,
    network: Option<nullspace_vm::network::GuestNetwork>,
) -> nullspace_init::protocol::StartSpec {
    nullspace_init::protocol::StartSpec {
        hostname: hostname.to_string(),
        env: runtime
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        user: runtime.user.clone(),
        workdir: runtime.workdir.clone(),
        command: runtime.start_cmd.clone(),
        readiness,
        network: network.map(|n| nullspace_init::protocol::NetworkConfig {
            address: n.address,
            prefix: n.prefix,
            gateway: n.gateway,
            dns: n.dns,
        }),
    }
}

/// The engine's VM runtime, detected on first use.
#[derive(Default)]
pub struct VmSupport {
    config: VmConfig,
    detected: OnceLock<Result<Arc<VmRuntime>, String>>,
}

impl VmSupport {
    /// Support that detects the runtime `config` describes.
    pub fn new(config: VmConfig) -> VmSupport {
        VmSupport {
            config,
            detected: OnceLock::new(),
        }
    }

    /// The runtime, or why there is none (naming what is missing).
    pub fn get(&self, data_root: &Path) -> Result<Arc<VmRuntime>, BuildError> {
        self.detected
            .get_or_init(|| {
                VmRuntime::detect(&self.config, data_root)
                    .map(Arc::new)
                    .map_err(|e| e.to_string())
            })
            .clone()
            .map_err(|reason| BuildError::VmUnavailable { reason })
    }
}

/// What the build VM needs from the build.
pub struct VmJob<'a> {
    /// The staged rootfs (written again in place: it becomes the disk at the snapshot).
    pub rootfs: &'a Path,
    /// The staging dir (gets `snapshot/`).
    pub staging: &'a Path,
    /// Runtime defaults (env, user, workdir, start command, readiness).
    pub runtime: &'a RuntimeDefaults,
    /// Template name (the guest's host name).
    pub name: &'a str,
    /// Size.
    pub size: MachineSize,
    /// The rootfs cache key (the disk before boot).
    pub rootfs_key: &'a str,
    /// A network card through passt, or none.
    pub network: Option<GuestNetwork>,
}

/// The snapshot cache key: everything that changes the snapshot.
pub fn snapshot_key(runtime: &VmRuntime, job: &VmJob<'_>) -> String {
    let mut hash = Sha256::new();
    let mut part = |label: &str, value: &str| {
        hash.update(label.as_bytes());
        hash.update((value.len() as u64).to_le_bytes());
        hash.update(value.as_bytes());
    };
    part("rootfs", job.rootfs_key);
    part(
        "runtime",
        &serde_json::to_string(job.runtime).unwrap_or_default(),
    );
    part("name", job.name);
    part(
        "size",
        &format!("{}x{}", job.size.cpu_count, job.size.memory_mb),
    );
    part(
        "network",
        &serde_json::to_string(&job.network).unwrap_or_default(),
    );
    part("kernel", &runtime.kernel_digest);
    part("initramfs", &runtime.initramfs.digest);
    part("agent", nullspace_init::AGENT_VERSION);
    part("vmm", runtime.qemu.version());
    part("cmdline", &Qemu::kernel_cmdline());
    format!("sha256:{}", hex::encode(hash.finalize()))
}

/// The probe the agent runs for a template's readiness.
pub fn probe(readiness: &Readiness) -> Result<Probe, BuildError> {
    let missing = |what: &str| BuildError::InvalidRequest {
        field: "readiness".into(),
        message: format!("kind {} needs {what}", readiness.kind),
    };
    let check = match readiness.kind.as_str() {
        "tcp" => ProbeCheck::Tcp {
            port: readiness.port.ok_or_else(|| missing("a port"))?,
        },
        "http" => ProbeCheck::Http {
            url: readiness.url.clone().ok_or_else(|| missing("a url"))?,
        },
        "file" => ProbeCheck::File {
            path: readiness.path.clone().ok_or_else(|| missing("a path"))?,
        },
        "process" => ProbeCheck::Process {
            name: readiness.name.clone().ok_or_else(|| missing("a name"))?,
        },
        "timeout" => ProbeCheck::Wait {
            ms: readiness.wait_ms.ok_or_else(|| missing("timeout_ms"))?,
        },
        "command" if !readiness.command.is_empty() => ProbeCheck::Command {
            command: readiness.command.clone(),
        },
        other => {
            return Err(BuildError::InvalidRequest {
                field: "readiness.kind".into(),
                message: format!("{other:?} is not a readiness kind"),
            })
        }
    };
    Ok(Probe {
        check,
        interval_ms: readiness.interval_ms,
        timeout_ms: readiness.timeout_ms,
        start_period_ms: readiness.start_period_ms,
        retries: readiness.retries.max(1),
    })
}

/// How long the build waits for the probe's verdict.
fn probe_budget(probe: &Probe) -> Duration {
    let attempt = probe.interval_ms.saturating_add(probe.timeout_ms);
    let mut ms = probe
        .start_period_ms
        .saturating_add(attempt.saturating_mul(u64::from(probe.retries) + 1));
    if let ProbeCheck::Wait { ms: wait } = probe.check {
        ms = ms.max(wait);
    }
    Duration::from_millis(ms) + PROBE_SLACK
}

/// The build VM's network: none without `internet_access`; with it, a passt network where
/// the operator allows build networks (passt cannot keep a guest from the host's private
/// networks), else none and a warning.
pub fn vm_network(
    internet_access: bool,
    allowed: bool,
) -> (Option<GuestNetwork>, Option<&'static str>) {
    match (internet_access, allowed) {
        (false, _) => (None, None),
        (true, true) => (Some(GuestNetwork::default()), None),
        (true, false) => (
            None,
            Some("the build VM has no network: this server gives build VMs none unless its operator allows build networks (NULLSPACE_BUILD_HOST_NETWORK=allow), since they would reach the host's private networks"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_build_vm_has_a_network_only_with_internet_access_where_the_operator_allows_it() {
        assert_eq!(vm_network(false, true), (None, None));
        assert_eq!(vm_network(false, false), (None, None));
        let (network, warning) = vm_network(true, true);
        assert_eq!(network, Some(GuestNetwork::default()));
        assert!(warning.is_none());
        let (network, warning) = vm_network(true, false);
        assert!(network.is_none());
        assert!(warning.is_some_and(|w| w.contains("NULLSPACE_BUILD_HOST_NETWORK=allow")));
    }

    #[test]
    fn readiness_maps_to_the_agents_probe_with_at_least_one_counted_failure() {
        let readiness = Readiness {
            kind: "tcp".into(),
            port: Some(8080),
            interval_ms: 100,
            timeout_ms: 1000,
            start_period_ms: 0,
            retries: 0,
            ..Readiness::default()
        };
        let probe = probe(&readiness).unwrap();
        assert_eq!(probe.check, ProbeCheck::Tcp { port: 8080 });
        assert_eq!(probe.retries, 1);
        assert!(probe_budget(&probe) >= Duration::from_millis(2200));
    }
}
