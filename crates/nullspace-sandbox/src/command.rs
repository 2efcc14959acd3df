//! Commands in a sandbox: their output as it comes (kept up to a bound for later readers and
//! broadcast to those following it), their end, and killing them.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use nullspace_init::protocol::{AgentMessage, HostMessage, Stream, MAX_CHUNK_BYTES};
use tokio::sync::{broadcast, watch};

use crate::agent::{AgentMux, Answers};

/// Bytes of each stream kept per command; output past it still streams to followers but is
/// not kept (the command's record says how much was left off).
pub const KEPT_OUTPUT_BYTES: usize = 1 << 20;

/// What a command asks for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CommandSpec {
    /// `/bin/sh -c` this, when set.
    pub shell: Option<String>,
    /// Else this program and its arguments.
    pub argv: Vec<String>,
    /// Per-command env, over the sandbox's.
    pub env: Vec<(String, String)>,
    /// Who runs it (the template's user when `None`).
    pub user: Option<String>,
    /// Where (the template's workdir when `None`).
    pub cwd: Option<String>,
    /// Killed after this long; `None` for no limit.
    pub timeout: Option<Duration>,
}

/// How a command ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandEnd {
    /// Exit status, when it exited.
    pub exit_code: Option<i32>,
    /// Signal number, when a signal ended it.
    pub signal: Option<i32>,
    /// Killed at its timeout.
    pub timed_out: bool,
    /// Killed on request.
    pub killed: bool,
    /// Why it could not run or was lost (the sandbox ended), if so.
    pub error: Option<String>,
}

/// Something a follower of a command sees.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommandEvent {
    /// Output bytes.
    Output(Stream, Vec<u8>),
    /// The end.
    End(CommandEnd),
}

#[derive(Default)]
struct Kept {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    left_off: u64,
}

/// A command started in a sandbox.
pub struct CommandRecord {
    /// Its id in the sandbox (`1`, `2`, ...).
    pub id: u64,
    /// What runs (for listings).
    pub display: String,
    pid: watch::Sender<Option<u32>>,
    kept: Mutex<Kept>,
    events: broadcast::Sender<CommandEvent>,
    end: watch::Sender<Option<CommandEnd>>,
    killed: std::sync::atomic::AtomicBool,
}

/// What a follower gets: everything so far, then the live events.
pub struct Follow {
    /// Output kept so far (stdout, stderr).
    pub stdout: Vec<u8>,
    /// Output kept so far.
    pub stderr: Vec<u8>,
    /// The end, when it already ended.
    pub end: Option<CommandEnd>,
    /// Later events.
    pub events: broadcast::Receiver<CommandEvent>,
}

impl CommandRecord {
    /// The command's process id in the guest, once it started.
    pub fn pid(&self) -> Option<u32> {
        *self.pid.borrow()
    }

    /// Waits until it started (or ended without starting).
    async fn started(&self) {
        let mut pid = self.pid.subscribe();
        let mut end = self.end.subscribe();
        loop {
            if pid.borrow_and_update().is_some() || end.borrow_and_update().is_some() {
                return;
            }
            tokio::select! {
                changed = pid.changed() => if changed.is_err() { return },
                changed = end.changed() => if changed.is_err() { return },
            }
        }
    }

    /// Output kept so far, and how many bytes were left off.
    pub fn output(&self) -> (Vec<u8>, Vec<u8>, u64) {
        self.kept
            .lock()
            .map(|k| (k.stdout.clone(), k.stderr.clone(), k.left_off))
            .unwrap_or_default()
    }

    /// Its end, once it ended.
    pub fn end(&self) -> Option<CommandEnd> {
        self.end.borrow().clone()
    }

    /// Waits for its end.
    pub async fn wait(&self) -> CommandEnd {
        let mut end = self.end.subscribe();
        loop {
            if let Some(done) = end.borrow_and_update().clone() {
                return done;
            }
            if end.changed().await.is_err() {
                return self.end().unwrap_or(CommandEnd {
                    exit_code: None,
                    signal: None,
                    timed_out: false,
                    killed: false,
                    error: Some("the command's record was dropped".into()),
                });
            }
        }
    }

    /// Output so far and the events after it, with no gap between them.
    pub fn follow(&self) -> Follow {
        // Output is kept and broadcast under the same lock, so nothing falls between.
        let kept = self.kept.lock();
        let events = self.events.subscribe();
        let end = self.end();
        let (stdout, stderr) = kept
            .map(|k| (k.stdout.clone(), k.stderr.clone()))
            .unwrap_or_default();
        Follow {
            stdout,
            stderr,
            end,
            events,
        }
    }

    fn output_came(&self, stream: Stream, data: Vec<u8>) {
        if let Ok(mut kept) = self.kept.lock() {
            let buffer = match stream {
                Stream::Stdout => &mut kept.stdout,
                Stream::Stderr => &mut kept.stderr,
            };
            let room = KEPT_OUTPUT_BYTES.saturating_sub(buffer.len());
            let keep = room.min(data.len());
            buffer.extend_from_slice(&data[..keep]);
            kept.left_off += (data.len() - keep) as u64;
            let _ = self.events.send(CommandEvent::Output(stream, data));
        }
    }

    fn ended(&self, mut end: CommandEnd) {
        end.killed = self.killed.load(std::sync::atomic::Ordering::Relaxed) && !end.timed_out;
        // Checked and set under the output lock: the first end wins (the agent's, or "lost").
        let _lock = self.kept.lock();
        if self.end.borrow().is_some() {
            return;
        }
        let _ = self.events.send(CommandEvent::End(end.clone()));
        self.end.send_replace(Some(end));
    }

    /// Kills it (its process group in the guest).
    pub async fn kill(&self, agent: &AgentMux) -> Result<(), crate::SandboxError> {
        self.killed
            .store(true, std::sync::atomic::Ordering::Relaxed);
        agent.send(&HostMessage::Kill { id: self.id }).await
    }

    /// Ends it as lost: the sandbox went away before it ended.
    pub fn lost(&self, reason: &str) {
        self.ended(CommandEnd {
            exit_code: None,
            signal: None,
            timed_out: false,
            killed: false,
            error: Some(format!(
                "the sandbox ended before the command did: {reason}"
            )),
        });
    }
}

/// Starts `spec` through `agent` (`sandbox_env` under the command's own env) and pumps its
/// answers into its record.
pub async fn start(
    agent: &Arc<AgentMux>,
    spec: &CommandSpec,
    sandbox_env: &[(String, String)],
) -> Result<Arc<CommandRecord>, crate::SandboxError> {
    let display = match &spec.shell {
        Some(shell) => shell.clone(),
        None => spec.argv.join(" "),
    };
    let mut env = sandbox_env.to_vec();
    env.extend(spec.env.iter().cloned());
    let timeout_ms = spec.timeout.map_or(0, |t| t.as_millis().max(1) as u64);
    let answers = agent
        .request(|id| {
            HostMessage::Run(nullspace_init::protocol::RunSpec {
                id,
                shell: spec.shell.clone(),
                argv: spec.argv.clone(),
                env,
                user: spec.user.clone(),
                cwd: spec.cwd.clone(),
                timeout_ms,
            })
        })
        .await?;
    // A follower that stops reading holds at most this many chunks (64 × 256 KiB) before it
    // is skipped ahead.
    let (events, _) = broadcast::channel(64);
    let record = Arc::new(CommandRecord {
        id: answers.id(),
        display,
        pid: watch::channel(None).0,
        kept: Mutex::new(Kept::default()),
        events,
        end: watch::channel(None).0,
        killed: std::sync::atomic::AtomicBool::new(false),
    });
    tokio::spawn(pump(answers, record.clone(), spec.timeout));
    record.started().await;
    Ok(record)
}

async fn pump(mut answers: Answers, record: Arc<CommandRecord>, timeout: Option<Duration>) {
    // The agent enforces the timeout; this margin only catches an agent that never answers.
    let give_up = timeout.map(|t| tokio::time::Instant::now() + t + Duration::from_secs(30));
    loop {
        let next = match give_up {
            Some(at) => match tokio::time::timeout_at(at, answers.next()).await {
                Ok(next) => next,
                Err(_) => {
                    return record.ended(CommandEnd {
                        exit_code: None,
                        signal: None,
                        timed_out: true,
                        killed: false,
                        error: Some("the agent did not report the command's end".into()),
                    })
                }
            },
            None => answers.next().await,
        };
        match next {
            None => return record.lost("its VM stopped"),
            Some(AgentMessage::RunStarted { pid, .. }) => {
                record.pid.send_replace(Some(pid));
            }
            // The guest is untrusted: chunks past the protocol's size are cut to it.
            Some(AgentMessage::Output {
                stream, mut data, ..
            }) => {
                data.truncate(MAX_CHUNK_BYTES);
                record.output_came(stream, data)
            }
            Some(AgentMessage::RunEnded {
                code,
                signal,
                timed_out,
                error,
                ..
            }) => {
                return record.ended(CommandEnd {
                    exit_code: code,
                    signal,
                    timed_out,
                    killed: false,
                    error,
                })
            }
            Some(_) => {}
        }
    }
}
