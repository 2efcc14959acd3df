//! `nullspace-init`: PID 1 of every Nullspace microVM (a static binary in the initramfs).
//!
//! It loads the kernel modules boot needs, mounts the template's rootfs read-write, switches
//! root into it and stays PID 1: it reaps zombies, sets the host name, brings up `lo`, and on
//! the host's [`HostMessage::Start`] applies the runtime defaults, starts the start command in
//! its own session, streams its output and runs its readiness probe. Everything it says goes
//! over the virtio-serial port [`nullspace_init::PORT_NAME`]; its own diagnostics go to the
//! console. Run as anything but PID 1 it prints its version (the host's check of the binary).

mod boot;
mod channel;
mod children;
mod exec;
mod net;
mod readiness;
mod sandbox;
mod start;

use std::sync::Arc;

use nullspace_init::protocol::{AgentMessage, HostMessage};
use nullspace_init::AGENT_VERSION;

fn main() {
    if std::process::id() != 1 {
        println!("nullspace-init {AGENT_VERSION}");
        return;
    }
    if let Err(message) = run() {
        console(&format!("fatal: {message}"));
        boot::power_off();
    }
}

/// Writes a diagnostic line to the console (the VM's serial log).
pub(crate) fn console(message: &str) {
    eprintln!("nullspace-init: {message}");
}

fn run() -> Result<(), String> {
    children::default_signals();
    boot::switch_root()?;
    let children = children::Children::start();
    net::loopback_up().map_err(|e| format!("bringing up lo: {e}"))?;
    let channel = channel::Channel::open()?;
    let agent = Arc::new(start::Agent::new(children.clone(), channel.sender()));
    let runs = sandbox::Runs::default();
    console("ready for the host");
    for message in channel.incoming() {
        match message {
            HostMessage::Hello => channel.send(AgentMessage::Hello {
                version: AGENT_VERSION.to_string(),
                uptime_ms: boot::uptime_ms(),
                start: agent.state(),
            }),
            HostMessage::Start(spec) => agent.start(spec),
            HostMessage::Exec {
                id,
                command,
                timeout_ms,
            } => exec::spawn(agent.clone(), id, command, timeout_ms),
            HostMessage::Sync => {
                rustix::fs::sync();
                channel.send(AgentMessage::Synced);
            }
            HostMessage::Status => channel.send(AgentMessage::Status {
                start: agent.state(),
            }),
            HostMessage::Run(spec) => sandbox::run(agent.clone(), runs.clone(), spec),
            HostMessage::Kill { id } => runs.kill(id),
            HostMessage::WriteFile {
                id,
                path,
                data,
                append,
                user,
            } => sandbox::file(
                agent.clone(),
                id,
                path,
                user,
                sandbox::FileRequest::Write { data, append },
            ),
            HostMessage::ReadFile {
                id,
                path,
                offset,
                length,
                user,
            } => sandbox::file(
                agent.clone(),
                id,
                path,
                user,
                sandbox::FileRequest::Read { offset, length },
            ),
            HostMessage::ListDir { id, path, user } => {
                sandbox::file(agent.clone(), id, path, user, sandbox::FileRequest::List)
            }
            HostMessage::SetClock { unix_ms, entropy } => {
                for outcome in [sandbox::set_clock(unix_ms), sandbox::reseed(&entropy)] {
                    if let Err(e) = outcome {
                        console(&e);
                    }
                }
                channel.send(AgentMessage::ClockSet)
            }
        }
    }
    Err("the agent channel's reader stopped".into())
}
