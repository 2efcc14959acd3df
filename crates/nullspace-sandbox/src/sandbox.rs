//! One sandbox: a VM restored from its template's snapshot (or cold-booted from a rootfs-only
//! template), its commands and files, its deadline, and how it ended.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use nullspace_init::protocol::{AgentMessage, DirEntry, HostMessage, MAX_CHUNK_BYTES};
use nullspace_vm::MachineSize;
use tokio::sync::{watch, Notify};

use crate::agent::AgentMux;
use crate::command::{self, CommandRecord, CommandSpec};
use crate::error::SandboxError;

/// Commands whose records a sandbox keeps; the oldest ended ones are forgotten past it.
const KEPT_COMMANDS: usize = 32;
/// Commands running at once in one sandbox (each keeps up to 2 MiB of output on the host).
pub const MAX_RUNNING_COMMANDS: usize = 32;
/// Longest wait for one answer of a file request.
const FILE_ANSWER: Duration = Duration::from_secs(60);

/// Why a sandbox ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndReason {
    /// Killed on request.
    Killed,
    /// Its timeout passed.
    TimedOut,
    /// Its VM stopped by itself (the guest powered off or QEMU died).
    VmExited,
    /// The server stopped.
    ServerStopped,
}

impl EndReason {
    /// `killed`, `timed_out`, `vm_exited`, `server_stopped`.
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Killed => "killed",
            EndReason::TimedOut => "timed_out",
            EndReason::VmExited => "vm_exited",
            EndReason::ServerStopped => "server_stopped",
        }
    }
}

/// A sandbox's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SandboxState {
    /// Its VM runs.
    Running,
    /// It ended.
    Ended {
        /// Why.
        reason: EndReason,
        /// What happened, in words.
        detail: String,
        /// When.
        at: SystemTime,
    },
}

/// How a sandbox started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartKind {
    /// Restored from the template's snapshot: the start command was already running.
    Snapshot,
    /// Booted from the template's rootfs (the template has no snapshot).
    ColdBoot,
}

impl StartKind {
    /// `snapshot` or `cold_boot`.
    pub fn as_str(self) -> &'static str {
        match self {
            StartKind::Snapshot => "snapshot",
            StartKind::ColdBoot => "cold_boot",
        }
    }
}

/// A running (or ended) sandbox.
pub struct Sandbox {
    /// `sb_...`.
    pub id: String,
    /// Who created it.
    pub owner: String,
    /// The template ref it was created from.
    pub template: String,
    /// The template build it runs.
    pub build_id: String,
    /// How it started.
    pub start_kind: StartKind,
    /// When it was created.
    pub created_at: SystemTime,
    /// From the create request to the agent's first answer.
    pub start_time: Duration,
    /// Its VM's size.
    pub size: MachineSize,
    /// Create-time env, applied to every command (never to the start command).
    pub(crate) env: Vec<(String, String)>,
    pub(crate) agent: Arc<AgentMux>,
    pub(crate) deadline: Mutex<SystemTime>,
    pub(crate) deadline_moved: Notify,
    pub(crate) state: watch::Sender<SandboxState>,
    pub(crate) kill_requested: Mutex<Option<(EndReason, String)>>,
    pub(crate) kill: Notify,
    pub(crate) commands: Mutex<BTreeMap<u64, Arc<CommandRecord>>>,
    /// Commands being started (not yet in `commands`).
    pub(crate) starting: AtomicUsize,
    /// QEMU's process id while it runs.
    pub pid: Option<u32>,
    /// Holds its copy-on-write disk overlay (and a cold boot's RAM file).
    pub(crate) dir: PathBuf,
}

impl Sandbox {
    /// Its state now.
    pub fn state(&self) -> SandboxState {
        self.state.borrow().clone()
    }

    /// When it will be killed if nobody extends it.
    pub fn deadline(&self) -> SystemTime {
        self.deadline
            .lock()
            .map(|d| *d)
            .unwrap_or_else(|_| SystemTime::now())
    }

    /// Create-time env names (values are the owner's and may be secret).
    pub fn env_names(&self) -> Vec<String> {
        self.env.iter().map(|(k, _)| k.clone()).collect()
    }

    fn running(&self) -> Result<(), SandboxError> {
        match self.state() {
            SandboxState::Running => Ok(()),
            SandboxState::Ended { reason, detail, .. } => Err(SandboxError::NotRunning {
                id: self.id.clone(),
                reason: format!("{} ({detail})", reason.as_str()),
            }),
        }
    }

    /// Moves its deadline to `timeout` from now.
    pub fn set_timeout(&self, timeout: Duration) -> Result<SystemTime, SandboxError> {
        self.running()?;
        let deadline = SystemTime::now() + timeout;
        if let Ok(mut slot) = self.deadline.lock() {
            *slot = deadline;
        }
        self.deadline_moved.notify_one();
        Ok(deadline)
    }

    /// Asks its supervisor to end it; returns once it ended.
    pub async fn end(&self, reason: EndReason, detail: &str) -> SandboxState {
        let mut state = self.state.subscribe();
        if matches!(*state.borrow(), SandboxState::Running) {
            if let Ok(mut slot) = self.kill_requested.lock() {
                slot.get_or_insert((reason, detail.to_string()));
            }
            self.kill.notify_one();
        }
        loop {
            let now = state.borrow_and_update().clone();
            if !matches!(now, SandboxState::Running) {
                return now;
            }
            if state.changed().await.is_err() {
                return self.state();
            }
        }
    }

    /// Starts a command. The start runs to its end even if the caller goes away, so every
    /// command that runs in the guest has a record (to list, follow and kill).
    pub async fn run(
        self: &Arc<Self>,
        spec: &CommandSpec,
    ) -> Result<Arc<CommandRecord>, SandboxError> {
        self.running()?;
        if spec.shell.is_none() && spec.argv.is_empty() {
            return Err(SandboxError::Invalid {
                field: "cmd",
                message: "give a shell command or an argv".into(),
            });
        }
        {
            // Counted under the commands lock together with the starts under way, so
            // concurrent requests cannot pass the limit together.
            let commands = self
                .commands
                .lock()
                .map_err(|_| SandboxError::Agent("the command table is unavailable".into()))?;
            let running = commands.values().filter(|c| c.end().is_none()).count();
            let starting = self.starting.load(Ordering::SeqCst);
            if running + starting >= MAX_RUNNING_COMMANDS {
                return Err(SandboxError::Quota(format!(
                    "{} commands already run in this sandbox (the limit is {MAX_RUNNING_COMMANDS}); wait for one or kill one",
                    running + starting
                )));
            }
            self.starting.fetch_add(1, Ordering::SeqCst);
        }
        let (sandbox, spec) = (self.clone(), spec.clone());
        let started = tokio::spawn(async move {
            let record = command::start(&sandbox.agent, &spec, &sandbox.env).await;
            if let (Ok(record), Ok(mut commands)) = (&record, sandbox.commands.lock()) {
                commands.insert(record.id, record.clone());
                while commands.len() > KEPT_COMMANDS {
                    let oldest_ended = commands
                        .iter()
                        .find(|(_, c)| c.end().is_some())
                        .map(|(id, _)| *id);
                    match oldest_ended {
                        Some(id) => commands.remove(&id),
                        None => break,
                    };
                }
            }
            sandbox.starting.fetch_sub(1, Ordering::SeqCst);
            record
        });
        started
            .await
            .map_err(|e| SandboxError::Agent(format!("starting the command: {e}")))?
    }

    /// A command by id.
    pub fn command(&self, id: u64) -> Result<Arc<CommandRecord>, SandboxError> {
        self.commands
            .lock()
            .ok()
            .and_then(|c| c.get(&id).cloned())
            .ok_or_else(|| SandboxError::CommandNotFound(id.to_string()))
    }

    /// Every command kept, oldest first.
    pub fn commands(&self) -> Vec<Arc<CommandRecord>> {
        self.commands
            .lock()
            .map(|c| c.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Kills a command.
    pub async fn kill_command(&self, id: u64) -> Result<Arc<CommandRecord>, SandboxError> {
        self.running()?;
        let record = self.command(id)?;
        if record.end().is_none() {
            record.kill(&self.agent).await?;
        }
        Ok(record)
    }

    /// The first answer to a file request.
    async fn file_answer(
        &self,
        build: impl FnOnce(u64) -> HostMessage,
    ) -> Result<AgentMessage, SandboxError> {
        self.running()?;
        let mut answers = self.agent.request(build).await?;
        match tokio::time::timeout(FILE_ANSWER, answers.next()).await {
            Err(_) => Err(SandboxError::Agent(format!(
                "no answer to a file request within {} s",
                FILE_ANSWER.as_secs()
            ))),
            Ok(None) => Err(SandboxError::Agent("the VM stopped".into())),
            Ok(Some(AgentMessage::FileFailed { kind, message, .. })) => {
                Err(SandboxError::File { kind, message })
            }
            Ok(Some(answer)) => Ok(answer),
        }
    }

    /// Writes `data` to `path` as `user` (the template's user when `None`), creating parent
    /// directories; returns the file's size.
    pub async fn write_file(
        &self,
        path: &str,
        data: &[u8],
        user: Option<&str>,
    ) -> Result<u64, SandboxError> {
        let mut size = 0;
        let mut chunks = data.chunks(MAX_CHUNK_BYTES).peekable();
        let mut first = true;
        // An empty file is one empty chunk.
        let empty: &[u8] = &[];
        if chunks.peek().is_none() {
            return self.write_chunk(path, empty, false, user).await;
        }
        for chunk in chunks {
            size = self.write_chunk(path, chunk, !first, user).await?;
            first = false;
        }
        Ok(size)
    }

    async fn write_chunk(
        &self,
        path: &str,
        chunk: &[u8],
        append: bool,
        user: Option<&str>,
    ) -> Result<u64, SandboxError> {
        let answer = self
            .file_answer(|id| HostMessage::WriteFile {
                id,
                path: path.to_string(),
                data: chunk.to_vec(),
                append,
                user: user.map(str::to_string),
            })
            .await?;
        match answer {
            AgentMessage::FileWritten { size, .. } => Ok(size),
            other => Err(unexpected(&other)),
        }
    }

    /// Reads `path` as `user`, refusing files over `limit` bytes.
    pub async fn read_file(
        &self,
        path: &str,
        user: Option<&str>,
        limit: u64,
    ) -> Result<Vec<u8>, SandboxError> {
        let mut data = Vec::new();
        loop {
            let answer = self
                .file_answer(|id| HostMessage::ReadFile {
                    id,
                    path: path.to_string(),
                    offset: data.len() as u64,
                    length: MAX_CHUNK_BYTES as u32,
                    user: user.map(str::to_string),
                })
                .await?;
            let AgentMessage::FileData {
                data: chunk, size, ..
            } = answer
            else {
                return Err(unexpected(&answer));
            };
            if size > limit {
                return Err(SandboxError::File {
                    kind: "too_large".into(),
                    message: format!("{path}: {size} bytes, over the {limit}-byte read limit"),
                });
            }
            let done = chunk.is_empty();
            data.extend_from_slice(&chunk);
            if done || data.len() as u64 >= size {
                return Ok(data);
            }
        }
    }

    /// Lists directory `path` as `user`.
    pub async fn list_dir(
        &self,
        path: &str,
        user: Option<&str>,
    ) -> Result<(Vec<DirEntry>, bool), SandboxError> {
        let answer = self
            .file_answer(|id| HostMessage::ListDir {
                id,
                path: path.to_string(),
                user: user.map(str::to_string),
            })
            .await?;
        match answer {
            AgentMessage::DirListing {
                entries, truncated, ..
            } => Ok((entries, truncated)),
            other => Err(unexpected(&other)),
        }
    }
}

fn unexpected(message: &AgentMessage) -> SandboxError {
    SandboxError::Agent(format!("unexpected answer {message:?}"))
}
