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
    truncate_line, AgentMessage, HostMessage, Probe, ProbeCheck, StartSpec, StartState, Stream,
    MAX_LOG_LINE_BYTES,
};
use nullspace_rootfs::runtime::{Readiness, RuntimeDefaults};
use nullspace_vm::initramfs::{self, Initramfs};
use nullspace_vm::kernel::GuestKernel;
use nullspace_vm::machine::{allocated_bytes, files, MachineDescription, MachineSize};
use nullspace_vm::network::GuestNetwork;
use nullspace_vm::{BootSpec, Disk, Qemu, RunningVm, VmError};

use crate::error::{io_at, BuildError, Phase};
use crate::events::{BuildEvent, EventSink};

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

/// Copies a (sparse) file, keeping its holes, then renames it over `path`: the staged rootfs
/// may be a hard link into the rootfs cache, which the VM must never write.
fn unshare_file(path: &Path) -> Result<(), BuildError> {
    use std::io::{Read, Seek, SeekFrom, Write};
    let copy = path.with_extension("ext4.vm");
    let mut source = std::fs::File::open(path).map_err(io_at(path))?;
    let length = source.metadata().map_err(io_at(path))?.len();
    let mut target = std::fs::File::create(&copy).map_err(io_at(&copy))?;
    target.set_len(length).map_err(io_at(&copy))?;
    let mut offset = 0u64;
    let mut buffer = vec![0u8; 1 << 20];
    while offset < length {
        let data = match rustix::fs::seek(&source, rustix::fs::SeekFrom::Data(offset)) {
            Ok(at) => at,
            Err(rustix::io::Errno::NXIO) => break,
            Err(e) => return Err(io_at(path)(e.into())),
        };
        let hole = rustix::fs::seek(&source, rustix::fs::SeekFrom::Hole(data))
            .map_err(|e| io_at(path)(e.into()))?;
        source.seek(SeekFrom::Start(data)).map_err(io_at(path))?;
        target.seek(SeekFrom::Start(data)).map_err(io_at(&copy))?;
        let mut left = hole - data;
        while left > 0 {
            let chunk = left.min(buffer.len() as u64) as usize;
            source
                .read_exact(&mut buffer[..chunk])
                .map_err(io_at(path))?;
            target.write_all(&buffer[..chunk]).map_err(io_at(&copy))?;
            left -= chunk as u64;
        }
        offset = hole;
    }
    target.sync_all().map_err(io_at(&copy))?;
    std::fs::rename(&copy, path).map_err(io_at(path))
}

/// Hard-links `from` to `to`, copying when they are on different filesystems.
pub(crate) fn link_or_copy(from: &Path, to: &Path) -> Result<(), BuildError> {
    if std::fs::hard_link(from, to).is_ok() {
        return Ok(());
    }
    std::fs::copy(from, to).map(|_| ()).map_err(io_at(to))
}

fn vm_error(phase: Phase) -> impl FnOnce(VmError) -> BuildError {
    move |source| BuildError::Vm { phase, source }
}

struct Output {
    tail: VecDeque<String>,
    logged: usize,
    dropped: u64,
}

/// Text from the guest (which may be hostile: any process in it can write to the agent's
/// port), cut to the length the log keeps.
fn guest_text(mut text: String) -> String {
    truncate_line(&mut text, MAX_LOG_LINE_BYTES);
    text
}

impl Output {
    /// Whether one more guest-made log entry fits the build's budget (else it is counted).
    fn admit(&mut self) -> bool {
        if self.logged < MAX_LOGGED_LINES {
            self.logged += 1;
            true
        } else {
            self.dropped = self.dropped.saturating_add(1);
            false
        }
    }

    fn line(&mut self, events: &dyn EventSink, stream: Stream, line: String) {
        let stream = match stream {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        };
        let line = guest_text(line);
        if self.tail.len() == OUTPUT_TAIL {
            self.tail.pop_front();
        }
        self.tail.push_back(format!("[{stream}] {line}"));
        if self.admit() {
            events.event(BuildEvent::GuestOutput { stream, line });
        }
    }

    /// Takes the lines still on their way after the start command ended.
    async fn drain(&mut self, vm: &mut RunningVm, events: &dyn EventSink) {
        while let Ok(Some(AgentMessage::Log { stream, line })) =
            vm.agent().next(Duration::from_millis(200)).await
        {
            self.line(events, stream, line);
        }
    }

    fn tail(&self) -> String {
        if self.tail.is_empty() {
            "(no output)".into()
        } else {
            self.tail.iter().cloned().collect::<Vec<_>>().join("\n")
        }
    }
}

fn vm_event(events: &dyn EventSink, phase: LogPhase, level: LogLevel, message: String) {
    events.event(BuildEvent::Vm {
        phase,
        level,
        message,
    });
}

/// Boots the staged rootfs, runs the start command to readiness and snapshots the VM into
/// `<staging>/snapshot`.
pub async fn run(
    runtime: &VmRuntime,
    job: &VmJob<'_>,
    cache_key: String,
    events: Arc<dyn EventSink>,
) -> Result<SnapshotRecord, BuildError> {
    let events = &*events;
    unshare_file(job.rootfs)?;
    let dir = job.staging.join(SNAPSHOT_DIR);
    std::fs::create_dir_all(&dir).map_err(io_at(&dir))?;
    link_or_copy(&runtime.kernel.image, &dir.join(files::KERNEL))?;
    link_or_copy(&runtime.initramfs.path, &dir.join(files::INITRAMFS))?;
    let probe = job.runtime.readiness.as_ref().map(probe).transpose()?;
    vm_event(
        events,
        LogPhase::VmCreate,
        LogLevel::Info,
        format!(
            "booting the build VM: {} vCPU, {} MiB, kernel {}, {}",
            job.size.cpu_count,
            job.size.memory_mb,
            runtime.kernel.release,
            runtime.qemu.version()
        ),
    );
    let spec = BootSpec {
        kernel: dir.join(files::KERNEL),
        initramfs: dir.join(files::INITRAMFS),
        disk: Disk {
            path: job.rootfs.to_path_buf(),
            discard_writes: false,
        },
        memory_file: dir.join(files::MEMORY),
        size: job.size,
        network: job.network,
    };
    let mut vm = runtime
        .qemu
        .boot(&spec)
        .await
        .map_err(vm_error(Phase::VmCreate))?;
    vm_event(
        events,
        LogPhase::VmCreate,
        LogLevel::Info,
        format!(
            "build VM up in {:.1} s ({})",
            vm.boot_time.as_secs_f64(),
            match vm.accel {
                nullspace_vm::Accel::Kvm => "KVM",
                nullspace_vm::Accel::Tcg => "TCG: software emulation, no usable KVM here",
            }
        ),
    );
    let start = StartSpec {
        hostname: job.name.to_string(),
        env: job
            .runtime
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        user: job.runtime.user.clone(),
        workdir: job.runtime.workdir.clone(),
        command: job.runtime.start_cmd.clone(),
        readiness: probe.clone(),
        network: job
            .network
            .map(|n| nullspace_init::protocol::NetworkConfig {
                address: n.address,
                prefix: n.prefix,
                gateway: n.gateway,
                dns: n.dns,
            }),
    };
    let started = Instant::now();
    vm.agent()
        .send(&HostMessage::Start(start))
        .await
        .map_err(vm_error(Phase::Startup))?;
    if let Some(command) = &job.runtime.start_cmd {
        vm_event(
            events,
            LogPhase::Startup,
            LogLevel::Info,
            format!("start command: {command}"),
        );
    }
    let deadline = started
        + match &probe {
            Some(probe) => probe_budget(probe),
            None => Duration::from_millis(SETTLE_MS),
        };
    let mut output = Output {
        tail: VecDeque::new(),
        logged: 0,
        dropped: 0,
    };
    let mut running = job.runtime.start_cmd.is_some();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let message = if left.is_zero() {
            None
        } else {
            vm.agent()
                .next(left)
                .await
                .map_err(vm_error(Phase::Startup))?
        };
        match message {
            None if probe.is_none() => {
                if running {
                    vm_event(
                        events,
                        LogPhase::Startup,
                        LogLevel::Info,
                        format!("start command still running after {SETTLE_MS} ms (no readiness probe): snapshotting it running"),
                    );
                }
                break;
            }
            None => {
                return Err(BuildError::NotReady {
                    attempts: 0,
                    detail: format!(
                        "the probe gave no verdict within {} s",
                        deadline.duration_since(started).as_secs()
                    ),
                    output: output.tail(),
                })
            }
            Some(AgentMessage::Log { stream, line }) => output.line(events, stream, line),
            Some(AgentMessage::LogsDropped { count }) => {
                output.dropped = output.dropped.saturating_add(count)
            }
            Some(AgentMessage::StartFailed { message }) => {
                return Err(BuildError::StartFailed {
                    message: guest_text(message),
                })
            }
            Some(AgentMessage::Started { start }) => {
                if let StartState::Running { pid, .. } = start {
                    vm_event(
                        events,
                        LogPhase::Startup,
                        LogLevel::Info,
                        format!("start command running as pid {pid}"),
                    );
                }
            }
            Some(AgentMessage::Exited { start }) => {
                running = false;
                let StartState::Exited { code, signal } = start else {
                    continue;
                };
                output.drain(&mut vm, events).await;
                if probe.is_none() && code == Some(0) {
                    events.event(BuildEvent::Warning {
                        message: "the start command exited with status 0 before the snapshot, so nothing of it is left running in the template (an interactive program like a shell exits at once without a terminal)".into(),
                    });
                    break;
                }
                return Err(BuildError::StartExited {
                    code,
                    signal,
                    output: output.tail(),
                });
            }
            Some(AgentMessage::ProbeResult {
                attempt,
                ok,
                detail,
            }) => {
                if output.admit() {
                    vm_event(
                        events,
                        LogPhase::Readiness,
                        LogLevel::Debug,
                        format!(
                            "readiness attempt {attempt}: {} ({})",
                            if ok { "passed" } else { "not yet" },
                            guest_text(detail)
                        ),
                    );
                }
            }
            Some(AgentMessage::Ready { after_ms }) => {
                vm_event(
                    events,
                    LogPhase::Readiness,
                    LogLevel::Info,
                    format!("ready after {after_ms} ms"),
                );
                break;
            }
            Some(AgentMessage::NotReady { attempts, detail }) => {
                return Err(BuildError::NotReady {
                    attempts,
                    detail: guest_text(detail),
                    output: output.tail(),
                })
            }
            Some(_) => {}
        }
    }
    let ready_ms = started.elapsed().as_millis() as u64;
    if output.dropped > 0 {
        events.event(BuildEvent::Warning {
            message: format!(
                "the build VM logged its limit of {MAX_LOGGED_LINES} lines of output and readiness results; {} more were not logged",
                output.dropped
            ),
        });
    }
    let state = vm.start_state().await.map_err(vm_error(Phase::Snapshot))?;
    let accel = vm.accel;
    let boot_ms = vm.boot_time.as_millis() as u64;
    let cmdline = vm.cmdline().to_string();
    vm_event(
        events,
        LogPhase::Sync,
        LogLevel::Info,
        "syncing the guest's filesystems".into(),
    );
    let snapshot_started = Instant::now();
    vm.snapshot(&dir).await.map_err(vm_error(Phase::Snapshot))?;
    let snapshot_ms = snapshot_started.elapsed().as_millis() as u64;
    let memory = dir.join(files::MEMORY);
    let state_path = dir.join(files::STATE);
    let machine = MachineDescription {
        vmm: "qemu".into(),
        vmm_version: runtime.qemu.version().to_string(),
        accel,
        machine: nullspace_vm::qemu::MACHINE.into(),
        cpu_model: match accel {
            nullspace_vm::Accel::Kvm => "host".into(),
            nullspace_vm::Accel::Tcg => "max".into(),
        },
        size: job.size,
        kernel_release: runtime.kernel.release.clone(),
        kernel_digest: runtime.kernel_digest.clone(),
        initramfs_digest: runtime.initramfs.digest.clone(),
        kernel_cmdline: cmdline,
        agent_version: nullspace_init::AGENT_VERSION.into(),
        network: job.network,
        memory_allocated_bytes: allocated_bytes(&memory),
        state_bytes: std::fs::metadata(&state_path)
            .map_err(io_at(&state_path))?
            .len(),
    };
    machine.write(&dir).map_err(vm_error(Phase::Snapshot))?;
    vm_event(
        events,
        LogPhase::Snapshot,
        LogLevel::Info,
        format!(
            "snapshot taken in {snapshot_ms} ms: {:.1} MiB of {} MiB guest RAM on disk, {:.1} KiB of device state",
            machine.memory_allocated_bytes as f64 / 1048576.0,
            job.size.memory_mb,
            machine.state_bytes as f64 / 1024.0
        ),
    );
    Ok(SnapshotRecord {
        path: SNAPSHOT_DIR.into(),
        machine,
        start: state,
        cache_key,
        boot_ms,
        ready_ms,
        snapshot_ms,
    })
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

/// Where the snapshot cache remembers which artifact holds the snapshot of a key.
pub fn cache_index(data_root: &Path, key: &str) -> PathBuf {
    data_root
        .join("vm/snapshots")
        .join(key.trim_start_matches("sha256:"))
}

/// The build VM stage of a build: the snapshot from the cache when an artifact already holds
/// one for the same key (an unchanged rebuild boots nothing), else a VM run.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn snapshot_stage(
    vm: &VmRuntime,
    data_root: &Path,
    build_id: &str,
    request: &crate::request::BuildRequest,
    runtime: &RuntimeDefaults,
    staging: &Path,
    rootfs_key: &str,
    network_allowed: bool,
    events: Arc<dyn EventSink>,
) -> Result<SnapshotRecord, BuildError> {
    let rootfs = staging.join(crate::artifact::ROOTFS_FILE);
    let (network, warning) = vm_network(request.internet_access, network_allowed);
    if let Some(message) = warning {
        events.event(BuildEvent::Warning {
            message: message.into(),
        });
    }
    let job = VmJob {
        rootfs: &rootfs,
        staging,
        runtime,
        name: &request.name,
        size: MachineSize {
            cpu_count: request.cpu_count.unwrap_or(DEFAULT_CPU_COUNT),
            memory_mb: request.memory_mb.unwrap_or(DEFAULT_MEMORY_MB),
        },
        rootfs_key,
        network,
    };
    let key = snapshot_key(vm, &job);
    let subject = format!("snapshot of {} ({key})", request.name);
    let cache = |status, reason| {
        events.event(BuildEvent::Cache {
            kind: nullspace_api::CacheKind::FinalArtifact,
            status,
            reason,
            subject: subject.clone(),
        })
    };
    let index = cache_index(data_root, &key);
    if request.skip_cache {
        cache(
            nullspace_api::CacheStatus::Bypass,
            Some("whole_build_skip_cache"),
        );
    } else if let Some(record) = reuse_snapshot(data_root, &index, &key, staging) {
        cache(nullspace_api::CacheStatus::Hit, None);
        return Ok(record);
    } else {
        cache(
            nullspace_api::CacheStatus::Miss,
            Some("missing_or_incompatible"),
        );
    }
    let record = run(vm, &job, key, events.clone()).await?;
    if !request.skip_cache {
        // Points at this build's artifact; a build that then fails leaves a pointer that
        // simply misses.
        if let Some(parent) = index.parent() {
            std::fs::create_dir_all(parent).map_err(io_at(parent))?;
        }
        std::fs::write(&index, build_id).map_err(io_at(&index))?;
        cache(nullspace_api::CacheStatus::Stored, None);
    }
    Ok(record)
}

/// Links the rootfs and snapshot of the artifact `index` names into `staging`, if that
/// artifact is still there and holds the snapshot of `key`.
fn reuse_snapshot(
    data_root: &Path,
    index: &Path,
    key: &str,
    staging: &Path,
) -> Option<SnapshotRecord> {
    let build_id = std::fs::read_to_string(index).ok()?;
    if !crate::ids::is_build_id(build_id.trim()) {
        return None;
    }
    let artifact = data_root.join("templates").join(build_id.trim());
    let document = crate::artifact::read_document(&artifact).ok()?;
    let record = document.snapshot.filter(|s| s.cache_key == key)?;
    let from = artifact.join(&record.path);
    let to = staging.join(SNAPSHOT_DIR);
    let result = (|| -> Result<(), BuildError> {
        std::fs::create_dir_all(&to).map_err(io_at(&to))?;
        for file in [
            files::MEMORY,
            files::STATE,
            files::MACHINE,
            files::KERNEL,
            files::INITRAMFS,
        ] {
            std::fs::hard_link(from.join(file), to.join(file)).map_err(io_at(&to.join(file)))?;
        }
        let rootfs = staging.join(crate::artifact::ROOTFS_FILE);
        let linked = staging.join("rootfs.ext4.cached");
        std::fs::hard_link(artifact.join(crate::artifact::ROOTFS_FILE), &linked)
            .map_err(io_at(&linked))?;
        std::fs::rename(&linked, &rootfs).map_err(io_at(&rootfs))
    })();
    match result {
        Ok(()) => Some(record),
        Err(_) => {
            let _ = std::fs::remove_dir_all(&to);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sparse_rootfs_is_copied_with_its_holes_and_contents() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rootfs.ext4");
        let file = std::fs::File::create(&path).unwrap();
        file.set_len(64 << 20).unwrap();
        use std::os::unix::fs::FileExt;
        file.write_all_at(b"head", 0).unwrap();
        file.write_all_at(b"middle", 32 << 20).unwrap();
        drop(file);
        let link = dir.path().join("cache.ext4");
        std::fs::hard_link(&path, &link).unwrap();
        unshare_file(&path).unwrap();
        let copied = std::fs::read(&path).unwrap();
        assert_eq!(copied, std::fs::read(&link).unwrap());
        assert_eq!(&copied[32 << 20..(32 << 20) + 6], b"middle");
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.nlink(), 1, "no longer the cache's inode");
        assert!(
            meta.blocks() * 512 < 1 << 20,
            "holes kept: {} bytes",
            meta.blocks() * 512
        );
    }

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
    fn a_flooding_guest_gets_a_bounded_log() {
        let events = std::sync::Mutex::new(Vec::new());
        let sink = |e: BuildEvent| events.lock().unwrap().push(e);
        let mut output = Output {
            tail: VecDeque::new(),
            logged: 0,
            dropped: 0,
        };
        for _ in 0..MAX_LOGGED_LINES + 10 {
            output.line(&sink, Stream::Stdout, "x".repeat(1 << 20));
        }
        assert!(!output.admit(), "probe results share the spent budget");
        let logged = events.lock().unwrap();
        assert_eq!(logged.len(), MAX_LOGGED_LINES);
        assert_eq!(output.dropped, 11);
        assert!(logged.iter().all(|e| matches!(e,
            BuildEvent::GuestOutput { line, .. } if line.len() <= MAX_LOG_LINE_BYTES + 8)));
        assert!(output.tail().len() <= OUTPUT_TAIL * (MAX_LOG_LINE_BYTES + 20));
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
