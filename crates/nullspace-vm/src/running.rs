//! A running microVM: its QEMU process, monitor and agent channel, from the start of QEMU to
//! the agent's hello (with the watch for a boot that exits, breaks or stalls), the snapshot
//! and the teardown. Dropping it kills QEMU (and its passt).

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::process::Child;

use nullspace_init::protocol::{AgentMessage, HostMessage, StartState};

use crate::channel::AgentChannel;
use crate::error::VmError;
use crate::machine::{files, Accel};
use crate::network::Passt;
use crate::qemu::ignore_shared;
use crate::qmp::Qmp;

/// A QEMU process before its agent answered.
pub(crate) struct Started {
    pub(crate) child: Child,
    pub(crate) run_dir: tempfile::TempDir,
    pub(crate) accel: Accel,
    pub(crate) passt: Option<Passt>,
}

impl Started {
    pub(crate) async fn failure(mut self, reason: String, attempts: u32) -> VmError {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
        let log = std::fs::read_to_string(self.run_dir.path().join("qemu.log")).unwrap_or_default();
        let console =
            std::fs::read_to_string(self.run_dir.path().join("console.log")).unwrap_or_default();
        VmError::BootFailed {
            reason: if log.trim().is_empty() {
                reason
            } else {
                format!("{reason}; QEMU said: {}", log.trim())
            },
            attempts,
            console: tail(&console, 30),
        }
    }

    /// The VM with its monitor and agent channel connected (its hello still to come).
    pub(crate) fn running(self, qmp: Qmp, agent: AgentChannel, cmdline: &str) -> RunningVm {
        RunningVm {
            child: self.child,
            qmp,
            agent,
            _passt: self.passt,
            run_dir: self.run_dir,
            accel: self.accel,
            boot_time: Duration::ZERO,
            cmdline: cmdline.to_string(),
            exec_id: 0,
        }
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A running VM whose agent answered.
pub struct RunningVm {
    child: Child,
    qmp: Qmp,
    agent: AgentChannel,
    /// Ends with the VM.
    _passt: Option<Passt>,
    run_dir: tempfile::TempDir,
    /// Acceleration in use.
    pub accel: Accel,
    /// From start to the agent's hello.
    pub boot_time: Duration,
    cmdline: String,
    /// The id of the last exec request.
    exec_id: u64,
}

impl RunningVm {
    /// Sends hellos until the agent answers, watching for QEMU exiting, a broken run state and
    /// a silent console.
    pub(crate) async fn wait_for_agent(
        &mut self,
        limit: Duration,
        stall: Duration,
    ) -> Result<(), String> {
        let started = Instant::now();
        let console = self.run_dir.path().join("console.log");
        let mut console_len = 0u64;
        let mut console_moved = Instant::now();
        let mut last_hello = None::<Instant>;
        loop {
            if last_hello.is_none_or(|t| t.elapsed() > Duration::from_secs(5)) {
                self.agent
                    .send(&HostMessage::Hello)
                    .await
                    .map_err(|e| e.to_string())?;
                last_hello = Some(Instant::now());
            }
            match self.agent.next(Duration::from_millis(200)).await {
                Ok(Some(AgentMessage::Hello { .. })) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                let log = std::fs::read_to_string(self.run_dir.path().join("qemu.log"))
                    .unwrap_or_default();
                return Err(format!("QEMU exited ({status}) {}", log.trim()));
            }
            let status = self.qmp.status().await.map_err(|e| e.to_string())?;
            if matches!(
                status.as_str(),
                "internal-error" | "guest-panicked" | "shutdown"
            ) {
                return Err(format!("the VM stopped in state {status}"));
            }
            let len = std::fs::metadata(&console).map_or(0, |m| m.len());
            if len != console_len {
                console_len = len;
                console_moved = Instant::now();
            } else if console_moved.elapsed() > stall {
                return Err(format!(
                    "the boot stalled: no console output for {} s",
                    stall.as_secs()
                ));
            }
            if started.elapsed() > limit {
                return Err(format!("no agent hello within {} s", limit.as_secs()));
            }
        }
    }

    /// The agent channel.
    pub fn agent(&mut self) -> &mut AgentChannel {
        &mut self.agent
    }

    /// The last `lines` lines of the guest console.
    pub fn console_tail(&self, lines: usize) -> String {
        tail(
            &std::fs::read_to_string(self.run_dir.path().join("console.log")).unwrap_or_default(),
            lines,
        )
    }

    /// Flushes the guest's filesystems, stops the VM and writes its device and CPU state to
    /// `snapshot_dir/state` (the RAM stays in its file), then ends QEMU. The disk is not
    /// written after this.
    pub async fn snapshot(mut self, snapshot_dir: &Path) -> Result<(), VmError> {
        self.agent
            .request(
                &HostMessage::Sync,
                Duration::from_secs(120),
                |m| matches!(m, AgentMessage::Synced).then_some(()),
                |_| {},
            )
            .await?;
        self.qmp.execute("stop", json!({})).await?;
        self.qmp
            .execute("migrate-set-capabilities", ignore_shared())
            .await?;
        let state = snapshot_dir.join(files::STATE);
        self.qmp
            .execute(
                "migrate",
                json!({"uri": format!("file:{}", state.display())}),
            )
            .await?;
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let info = self.qmp.execute("query-migrate", json!({})).await?;
            match info.get("status").and_then(|s| s.as_str()).unwrap_or("") {
                "completed" => break,
                "failed" | "cancelled" => {
                    return Err(VmError::Qmp(format!(
                        "migration to {} failed: {}",
                        state.display(),
                        info.get("error-desc")
                            .and_then(|s| s.as_str())
                            .unwrap_or("no reason given")
                    )))
                }
                _ if Instant::now() > deadline => {
                    return Err(VmError::TimedOut {
                        what: "writing the snapshot state".into(),
                        seconds: 120,
                    })
                }
                _ => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
        let _ = self.qmp.execute("quit", json!({})).await;
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            self.kill().await;
        }
        Ok(())
    }

    /// The start command's state, as the agent reports it.
    pub async fn start_state(&mut self) -> Result<StartState, VmError> {
        self.agent
            .request(
                &HostMessage::Status,
                Duration::from_secs(30),
                |m| match m {
                    AgentMessage::Status { start } => Some(start.clone()),
                    _ => None,
                },
                |_| {},
            )
            .await
    }

    /// Runs `command` in the guest (as the runtime user) and returns its exit status and
    /// stdout; waits at most `timeout` plus a margin for the answer.
    pub async fn exec(
        &mut self,
        command: &str,
        timeout: Duration,
    ) -> Result<(Option<i32>, String), VmError> {
        // Each request its own id: a late answer to an earlier one is not taken for this one.
        self.exec_id += 1;
        let wanted = self.exec_id;
        let request = HostMessage::Exec {
            id: wanted,
            command: command.to_string(),
            timeout_ms: timeout.as_millis() as u64,
        };
        self.agent
            .request(
                &request,
                timeout + Duration::from_secs(10),
                |m| match m {
                    AgentMessage::ExecResult {
                        id, code, stdout, ..
                    } if *id == wanted => Some((*code, stdout.clone())),
                    _ => None,
                },
                |_| {},
            )
            .await
    }

    /// The kernel command line it booted with.
    pub fn cmdline(&self) -> &str {
        &self.cmdline
    }

    /// Ends QEMU at once.
    pub async fn kill(&mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }

    /// Splits into the VM's process and its agent channel, for a caller (a sandbox) that
    /// multiplexes the channel itself.
    pub fn into_parts(self) -> (VmProcess, AgentChannel) {
        (
            VmProcess {
                child: self.child,
                _qmp: self.qmp,
                _passt: self._passt,
                run_dir: self.run_dir,
                accel: self.accel,
                boot_time: self.boot_time,
            },
            self.agent,
        )
    }
}

/// A VM's QEMU process (and its passt) without the agent channel. Dropping it kills QEMU.
pub struct VmProcess {
    child: Child,
    /// Kept open: QEMU's monitor.
    _qmp: Qmp,
    _passt: Option<Passt>,
    run_dir: tempfile::TempDir,
    /// Acceleration in use.
    pub accel: Accel,
    /// From QEMU's start to the agent's hello.
    pub boot_time: Duration,
}

impl VmProcess {
    /// QEMU's process id (for memory accounting), while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Waits until QEMU ends and says how.
    pub async fn wait(&mut self) -> String {
        match self.child.wait().await {
            Ok(status) => status.to_string(),
            Err(e) => format!("waiting for QEMU: {e}"),
        }
    }

    /// Ends QEMU at once.
    pub async fn kill(&mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }

    /// The last `lines` lines of the guest console.
    pub fn console_tail(&self, lines: usize) -> String {
        tail(
            &std::fs::read_to_string(self.run_dir.path().join("console.log")).unwrap_or_default(),
            lines,
        )
    }
}
