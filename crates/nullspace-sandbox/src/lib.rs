//! Nullspace sandboxes: microVMs started from templates.
//!
//! A sandbox restores its template's snapshot: the RAM file is mapped copy-on-write (every
//! sandbox of a template shares its untouched pages through the page cache) and the rootfs is
//! opened read-only under a copy-on-write overlay of its own, so the template's files are never
//! written. The start command is already running and ready; nothing is re-run. A template
//! without a snapshot cold-boots instead. Commands, files and the wall clock go through the
//! guest agent's channel, shared by all requests at once ([`agent::AgentMux`]).
//!
//! This crate knows VMs and agents, not images or registries: the caller resolves a template
//! to a [`TemplateImage`] (paths and defaults) and records what [`Ledger`] is told.
//!
//! It is its own crate, not a module of the server, so that the lifecycle (limits, deadlines,
//! the supervisor that notices a dead VM) is testable with a real VM and no HTTP, and so the
//! CLI's local mode and the server share it.

pub mod agent;
pub mod command;
pub mod error;
pub mod sandbox;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use nullspace_init::protocol::{AgentMessage, HostMessage, StartSpec};
use nullspace_vm::{BootSpec, Disk, MachineSize, Qemu, RunningVm};
use rand::Rng;
use tokio::sync::{watch, Notify};

pub use command::{CommandEnd, CommandEvent, CommandRecord, CommandSpec};
pub use error::SandboxError;
pub use sandbox::{EndReason, Sandbox, SandboxState, StartKind};

/// A template as a sandbox starts from it.
#[derive(Clone, Debug)]
pub struct TemplateImage {
    /// The ref the caller asked for (shown back).
    pub reference: String,
    /// The build.
    pub build_id: String,
    /// Its rootfs (never written).
    pub rootfs: PathBuf,
    /// Its snapshot dir, when it has one.
    pub snapshot: Option<PathBuf>,
    /// The VM size (the snapshot's, which a restore must match).
    pub size: MachineSize,
    /// Runtime defaults for a cold boot (a snapshot already applied them).
    pub defaults: StartSpec,
    /// Kernel and initramfs for a cold boot.
    pub boot_files: Option<(PathBuf, PathBuf)>,
}

/// Per-owner limits and timeouts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Running sandboxes per owner.
    pub max_per_owner: u32,
    /// Guest memory (MiB) of one owner's running sandboxes together.
    pub max_memory_mb_per_owner: u64,
    /// Timeout when the request names none.
    pub default_timeout: Duration,
    /// Longest timeout a request may set.
    pub max_timeout: Duration,
}

impl Default for Limits {
    /// 20 sandboxes and 16 GiB per owner, 5 minutes by default, at most 24 hours.
    fn default() -> Limits {
        Limits {
            max_per_owner: 20,
            max_memory_mb_per_owner: 16 << 10,
            default_timeout: Duration::from_secs(300),
            max_timeout: Duration::from_secs(24 * 3600),
        }
    }
}

/// Told when sandboxes start and end (the server records them durably).
pub trait Ledger: Send + Sync + 'static {
    /// `sandbox` ended in `state`.
    fn ended(&self, sandbox: &Sandbox, state: &SandboxState);
}

#[derive(Default)]
struct Accounts {
    /// Per owner: running (or starting) sandboxes and their memory.
    used: HashMap<String, (u32, u64)>,
}

/// The sandboxes of one host.
pub struct Sandboxes {
    /// Held (flock) while this host runs sandboxes in `dir`.
    _lock: std::fs::File,
    qemu: Qemu,
    dir: PathBuf,
    limits: Limits,
    ledger: Arc<dyn Ledger>,
    live: Mutex<HashMap<String, Arc<Sandbox>>>,
    accounts: Mutex<Accounts>,
}

/// A reservation of an owner's quota, given back on drop unless the sandbox started.
struct Reservation<'a> {
    sandboxes: &'a Sandboxes,
    owner: String,
    memory_mb: u64,
    kept: bool,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if !self.kept {
            self.sandboxes.release(&self.owner, self.memory_mb);
        }
    }
}

fn new_id() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::thread_rng();
    let tail: String = (0..20)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect();
    format!("sb_{tail}")
}

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> SandboxError + '_ {
    move |source| SandboxError::Io {
        path: path.display().to_string(),
        source,
    }
}

impl Sandboxes {
    /// Sandboxes run with `qemu`, keep their overlays under `dir` (emptied now: nothing there
    /// outlives the process that ran it), and report ends to `ledger`.
    pub fn new(
        qemu: Qemu,
        dir: PathBuf,
        limits: Limits,
        ledger: Arc<dyn Ledger>,
    ) -> Result<Sandboxes, SandboxError> {
        // One host per sandboxes dir: a second server on the same data dir must not empty the
        // first one's overlays.
        let lock_path = dir.with_extension("lock");
        let lock = std::fs::File::create(&lock_path).map_err(io_at(&lock_path))?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(
            |_| {
                SandboxError::Unstartable(format!(
                    "another server runs sandboxes on this data dir ({} is locked)",
                    lock_path.display()
                ))
            },
        )?;
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(io_at(&dir))?;
        }
        std::fs::create_dir_all(&dir).map_err(io_at(&dir))?;
        Ok(Sandboxes {
            _lock: lock,
            qemu,
            dir,
            limits,
            ledger,
            live: Mutex::default(),
            accounts: Mutex::default(),
        })
    }

    /// The limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    fn reserve(&self, owner: &str, memory_mb: u64) -> Result<Reservation<'_>, SandboxError> {
        let mut accounts = self
            .accounts
            .lock()
            .map_err(|_| SandboxError::Quota("the quota ledger is unavailable".into()))?;
        let (count, memory) = accounts.used.get(owner).copied().unwrap_or((0, 0));
        if count >= self.limits.max_per_owner {
            return Err(SandboxError::Quota(format!(
                "you have {count} running sandboxes, the limit is {}; kill one first",
                self.limits.max_per_owner
            )));
        }
        if memory + memory_mb > self.limits.max_memory_mb_per_owner {
            return Err(SandboxError::Quota(format!(
                "your running sandboxes use {memory} MiB of guest memory and this one needs {memory_mb} MiB; the limit is {} MiB",
                self.limits.max_memory_mb_per_owner
            )));
        }
        accounts
            .used
            .insert(owner.to_string(), (count + 1, memory + memory_mb));
        Ok(Reservation {
            sandboxes: self,
            owner: owner.to_string(),
            memory_mb,
            kept: false,
        })
    }

    fn release(&self, owner: &str, memory_mb: u64) {
        if let Ok(mut accounts) = self.accounts.lock() {
            if let Some((count, memory)) = accounts.used.get_mut(owner) {
                *count = count.saturating_sub(1);
                *memory = memory.saturating_sub(memory_mb);
                if *count == 0 {
                    accounts.used.remove(owner);
                }
            }
        }
    }

    /// The timeout a request asks for, checked.
    pub fn timeout(&self, requested: Option<Duration>) -> Result<Duration, SandboxError> {
        let timeout = requested.unwrap_or(self.limits.default_timeout);
        if timeout.is_zero() || timeout > self.limits.max_timeout {
            return Err(SandboxError::Invalid {
                field: "timeout",
                message: format!(
                    "{} s is outside 1 s ..= {} s",
                    timeout.as_secs(),
                    self.limits.max_timeout.as_secs()
                ),
            });
        }
        Ok(timeout)
    }

    /// Starts a sandbox of `owner` from `image`, with `env` over the template's env for its
    /// commands, killed after `timeout`. Returns once its agent answered.
    pub async fn create(
        self: &Arc<Self>,
        owner: &str,
        image: &TemplateImage,
        env: Vec<(String, String)>,
        timeout: Duration,
    ) -> Result<Arc<Sandbox>, SandboxError> {
        let mut reservation = self.reserve(owner, u64::from(image.size.memory_mb))?;
        let started = Instant::now();
        let id = new_id();
        let dir = self.dir.join(&id);
        std::fs::create_dir_all(&dir).map_err(io_at(&dir))?;
        let vm = match self.start_vm(image, &dir).await {
            Ok(vm) => vm,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        let (start_kind, vm) = vm;
        let (mut process, channel) = vm.into_parts();
        let agent = agent::AgentMux::new(channel);
        // A restored guest wakes with the snapshot's wall clock.
        if let Err(e) = set_clock(&agent).await {
            process.kill().await;
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
        let sandbox = Arc::new(Sandbox {
            id: id.clone(),
            owner: owner.to_string(),
            template: image.reference.clone(),
            build_id: image.build_id.clone(),
            start_kind,
            created_at: SystemTime::now(),
            start_time: started.elapsed(),
            size: image.size,
            env,
            agent,
            deadline: Mutex::new(SystemTime::now() + timeout),
            deadline_moved: Notify::new(),
            state: watch::channel(SandboxState::Running).0,
            kill_requested: Mutex::new(None),
            kill: Notify::new(),
            commands: Mutex::default(),
            starting: std::sync::atomic::AtomicUsize::new(0),
            pid: process.pid(),
            dir,
        });
        reservation.kept = true;
        if let Ok(mut live) = self.live.lock() {
            live.insert(id, sandbox.clone());
        }
        tokio::spawn(self.clone().supervise(sandbox.clone(), process));
        Ok(sandbox)
    }

    async fn start_vm(
        &self,
        image: &TemplateImage,
        dir: &Path,
    ) -> Result<(StartKind, RunningVm), SandboxError> {
        let disk = Disk {
            path: image.rootfs.clone(),
            overlay_dir: Some(dir.to_path_buf()),
        };
        if let Some(snapshot) = &image.snapshot {
            let vm = self.qemu.restore(snapshot, disk).await?;
            return Ok((StartKind::Snapshot, vm));
        }
        let Some((kernel, initramfs)) = image.boot_files.clone() else {
            return Err(SandboxError::Unstartable(
                "it has no snapshot and this host has no guest kernel to boot it".into(),
            ));
        };
        let spec = BootSpec {
            kernel,
            initramfs,
            disk,
            memory_file: dir.join("memory"),
            size: image.size,
            network: None,
        };
        let mut vm = self.qemu.boot(&spec).await?;
        vm.agent()
            .send(&HostMessage::Start(image.defaults.clone()))
            .await?;
        wait_started(&mut vm, &image.defaults).await?;
        Ok((StartKind::ColdBoot, vm))
    }

    /// Watches `sandbox` until its VM stops, it is killed or its deadline passes.
    async fn supervise(
        self: Arc<Self>,
        sandbox: Arc<Sandbox>,
        mut process: nullspace_vm::running::VmProcess,
    ) {
        let mut agent_closed = sandbox.agent.watch_closed();
        let (reason, detail) = loop {
            let deadline = sandbox.deadline();
            let left = deadline
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO);
            tokio::select! {
                status = process.wait() => {
                    let console = process.console_tail(5);
                    break (EndReason::VmExited, format!("QEMU exited ({status}); last console lines: {console}"));
                }
                _ = sandbox.kill.notified() => {
                    process.kill().await;
                    let asked = sandbox.kill_requested.lock().ok().and_then(|r| r.clone());
                    break asked.unwrap_or((EndReason::Killed, "killed".into()));
                }
                _ = sandbox.deadline_moved.notified() => continue,
                // A guest that breaks its channel can no longer be used: it ends here.
                closed = async {
                    agent_closed
                        .wait_for(|closed| closed.is_some())
                        .await
                        .ok()
                        .and_then(|closed| closed.clone())
                } => {
                    let reason = closed.unwrap_or_default();
                    // Usually QEMU itself is ending; otherwise the guest broke the channel.
                    if let Ok(status) = tokio::time::timeout(Duration::from_secs(2), process.wait()).await {
                        let console = process.console_tail(5);
                        break (EndReason::VmExited, format!("QEMU exited ({status}); last console lines: {console}"));
                    }
                    process.kill().await;
                    break (EndReason::VmExited, format!("its agent channel broke: {reason}"));
                }
                _ = tokio::time::sleep(left) => {
                    if sandbox.deadline() <= SystemTime::now() {
                        process.kill().await;
                        break (EndReason::TimedOut, "its timeout passed".into());
                    }
                }
            }
        };
        let state = SandboxState::Ended {
            reason,
            detail,
            at: SystemTime::now(),
        };
        for command in sandbox.commands() {
            command.lost(reason.as_str());
        }
        let _ = std::fs::remove_dir_all(&sandbox.dir);
        self.release(&sandbox.owner, u64::from(sandbox.size.memory_mb));
        // Recorded before it leaves the live set, so a reader always finds it one way or the
        // other.
        {
            // The ledger may write to a database: off the async workers.
            let (ledger, ended, recorded) = (self.ledger.clone(), sandbox.clone(), state.clone());
            let _ = tokio::task::spawn_blocking(move || ledger.ended(&ended, &recorded)).await;
        }
        if let Ok(mut live) = self.live.lock() {
            live.remove(&sandbox.id);
        }
        sandbox.state.send_replace(state);
    }

    /// A running sandbox of `owner`.
    pub fn get(&self, owner: &str, id: &str) -> Option<Arc<Sandbox>> {
        self.live
            .lock()
            .ok()
            .and_then(|live| live.get(id).cloned())
            .filter(|s| s.owner == owner)
    }

    /// `owner`'s running sandboxes.
    pub fn list(&self, owner: &str) -> Vec<Arc<Sandbox>> {
        let mut found: Vec<_> = self
            .live
            .lock()
            .map(|live| {
                live.values()
                    .filter(|s| s.owner == owner)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        found.sort_by_key(|s| s.created_at);
        found
    }

    /// Ends every sandbox (the server is stopping).
    pub async fn shutdown(&self) {
        let all: Vec<_> = self
            .live
            .lock()
            .map(|live| live.values().cloned().collect())
            .unwrap_or_default();
        for sandbox in all {
            sandbox
                .end(EndReason::ServerStopped, "the server stopped")
                .await;
        }
    }
}

/// Sets the guest's clock and reseeds its RNG (a restored guest wakes with the snapshot's
/// time and random state).
async fn set_clock(agent: &agent::AgentMux) -> Result<(), SandboxError> {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let mut entropy = vec![0u8; 64];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut entropy);
    let mut answers = agent
        .control(&HostMessage::SetClock {
            unix_ms: now.as_millis() as u64,
            entropy,
        })
        .await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, answers.next()).await {
            Err(_) => return Err(SandboxError::Agent("no answer to setting the clock".into())),
            Ok(None) => return Err(SandboxError::Agent("the VM stopped".into())),
            Ok(Some(AgentMessage::ClockSet)) => return Ok(()),
            Ok(Some(_)) => {}
        }
    }
}

/// After a cold boot's `Start`: waits until the start command runs (and is ready, with a
/// probe).
async fn wait_started(vm: &mut RunningVm, defaults: &StartSpec) -> Result<(), SandboxError> {
    if defaults.command.is_none() && defaults.readiness.is_none() {
        return Ok(());
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match vm.agent().next(left).await? {
            None => {
                return Err(SandboxError::Unstartable(
                    "its start command was not ready within 300 s".into(),
                ))
            }
            Some(AgentMessage::StartFailed { message }) => {
                return Err(SandboxError::Unstartable(message))
            }
            Some(AgentMessage::Exited { start }) => {
                return Err(SandboxError::Unstartable(format!(
                    "its start command ended: {start:?}"
                )))
            }
            Some(AgentMessage::NotReady { detail, .. }) => {
                return Err(SandboxError::Unstartable(format!(
                    "its start command did not get ready: {detail}"
                )))
            }
            Some(AgentMessage::Ready { .. }) => return Ok(()),
            Some(AgentMessage::Started { .. }) if defaults.readiness.is_none() => return Ok(()),
            Some(_) => {}
        }
    }
}
