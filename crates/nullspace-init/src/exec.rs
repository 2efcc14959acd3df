//! Commands the host runs in the guest ([`HostMessage::Exec`]): `/bin/sh -c` as the runtime
//! user, output captured up to a bound, the whole process group killed at the timeout.

use std::io::Read;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nullspace_init::protocol::{AgentMessage, MAX_EXEC_OUTPUT_BYTES};

use crate::children::{kill_group, Children};
use crate::start::{Agent, Runtime};

/// What a finished command left.
pub struct Outcome {
    /// Exit status, `None` when a signal ended it or it timed out.
    pub code: Option<i32>,
    /// Captured stdout.
    pub stdout: String,
    /// Captured stderr.
    pub stderr: String,
    /// Killed at the timeout.
    pub timed_out: bool,
}

fn capture(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let Some(mut pipe) = pipe else {
            return String::new();
        };
        let mut kept = Vec::new();
        let _ = (&mut pipe)
            .take(MAX_EXEC_OUTPUT_BYTES as u64)
            .read_to_end(&mut kept);
        // Drain the rest so the command never blocks on a full pipe.
        let _ = std::io::copy(&mut pipe, &mut std::io::sink());
        String::from_utf8_lossy(&kept).into_owned()
    })
}

/// Runs `command` as `runtime` until it ends or `timeout` passes.
pub fn run(
    children: &Children,
    runtime: &Runtime,
    command: &str,
    timeout: Duration,
) -> Result<Outcome, String> {
    let mut shell = runtime.shell(command);
    shell.stdout(Stdio::piped()).stderr(Stdio::piped());
    let (pid, mut child) = children
        .spawn(&mut shell)
        .map_err(|e| format!("starting /bin/sh -c {command:?}: {e}"))?;
    let stdout = capture(child.stdout.take());
    let stderr = capture(child.stderr.take());
    let exit = children.wait(pid, Some(Instant::now() + timeout));
    let timed_out = exit.is_none();
    if timed_out {
        kill_group(pid);
        let _ = children.wait(pid, Some(Instant::now() + Duration::from_secs(5)));
    } else {
        // Whatever it left behind in its session must not hold the pipes open forever.
        kill_group(pid);
    }
    Ok(Outcome {
        code: exit.and_then(|e| e.code),
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
        timed_out,
    })
}

/// Runs a host's exec request on its own thread and answers with its result.
pub fn spawn(agent: Arc<Agent>, id: u64, command: String, timeout_ms: u64) {
    std::thread::spawn(move || {
        let runtime = agent.runtime();
        let result = run(
            &agent.children,
            &runtime,
            &command,
            Duration::from_millis(timeout_ms),
        );
        agent.host.send(match result {
            Ok(outcome) => AgentMessage::ExecResult {
                id,
                code: outcome.code,
                stdout: outcome.stdout,
                stderr: outcome.stderr,
                timed_out: outcome.timed_out,
                error: None,
            },
            Err(error) => AgentMessage::ExecResult {
                id,
                code: None,
                stdout: String::new(),
                stderr: String::new(),
                timed_out: false,
                error: Some(error),
            },
        });
    });
}
