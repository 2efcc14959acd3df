//! PID 1's reaper. Every process in the guest that loses its parent ends up ours, so a thread
//! reaps all of them; the processes we start and wait for are registered at spawn.
//!
//! `std::process::Command::spawn` itself waits for a child whose `exec` failed; a reaper that
//! could take that child first would make it panic. So the reaper only reaps (non-blocking,
//! every [`POLL`]) while holding the same lock that spawning holds.

use std::collections::HashMap;
use std::process::Command;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rustix::process::{wait, WaitOptions};

/// How often exited children are collected.
const POLL: Duration = Duration::from_millis(20);

/// How a child ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exit {
    /// Exit status, when it exited.
    pub code: Option<i32>,
    /// Signal number, when a signal ended it.
    pub signal: Option<i32>,
}

#[derive(Default)]
struct Registry {
    /// Registered children: `None` while running.
    watched: HashMap<u32, Option<Exit>>,
}

/// The reaper and the registry of children someone waits for.
#[derive(Clone)]
pub struct Children {
    inner: Arc<(Mutex<Registry>, Condvar)>,
}

impl Children {
    /// Starts the reaper thread (after [`default_signals`]).
    pub fn start() -> Children {
        let children = Children {
            inner: Arc::new((Mutex::new(Registry::default()), Condvar::new())),
        };
        let reaper = children.clone();
        std::thread::spawn(move || loop {
            reaper.reap();
            std::thread::sleep(POLL);
        });
        children
    }

    fn lock(&self) -> MutexGuard<'_, Registry> {
        self.inner
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn reap(&self) {
        let mut registry = self.lock();
        let mut any = false;
        // `wait`, not `waitpid(None)`: the latter is only our own process group, and every
        // command we start leads its own session.
        while let Ok(Some((pid, status))) = wait(WaitOptions::NOHANG) {
            let pid = pid.as_raw_nonzero().get() as u32;
            if let Some(slot) = registry.watched.get_mut(&pid) {
                *slot = Some(Exit {
                    code: status.exit_status(),
                    signal: status.terminating_signal(),
                });
                any = true;
            }
        }
        if any {
            self.inner.1.notify_all();
        }
    }

    /// Spawns `command` and registers it; returns its pid.
    pub fn spawn(&self, command: &mut Command) -> std::io::Result<(u32, std::process::Child)> {
        let mut registry = self.lock();
        let child = command.spawn()?;
        registry.watched.insert(child.id(), None);
        Ok((child.id(), child))
    }

    /// Waits until `pid` (registered by [`Children::spawn`]) ends or `deadline` passes.
    pub fn wait(&self, pid: u32, deadline: Option<Instant>) -> Option<Exit> {
        let mut registry = self.lock();
        loop {
            if let Some(Some(exit)) = registry.watched.get(&pid) {
                let exit = *exit;
                registry.watched.remove(&pid);
                return Some(exit);
            }
            let wait = match deadline {
                Some(d) => d.checked_duration_since(Instant::now())?,
                None => Duration::from_secs(3600),
            };
            registry = self
                .inner
                .1
                .wait_timeout(registry, wait)
                .map(|(guard, _)| guard)
                .unwrap_or_else(|poisoned| poisoned.into_inner().0);
        }
    }
}

/// Gives every signal its default action. The kernel starts PID 1 with signals ignored, and
/// ignored signals survive `exec`: left so, `SIGCHLD` would auto-reap (nothing to wait for) and
/// every process in the guest would ignore `SIGTERM`, `SIGINT` and `SIGHUP`.
#[allow(unsafe_code)]
pub fn default_signals() {
    for signal in 1..libc::SIGRTMAX() {
        if signal == libc::SIGKILL || signal == libc::SIGSTOP {
            continue;
        }
        // SAFETY: `signal(2)` with `SIG_DFL` installs no handler, so no code of ours can run
        // asynchronously; invalid numbers only make it return an error, which is ignored.
        unsafe {
            libc::signal(signal, libc::SIG_DFL);
        }
    }
}

/// Kills the process group of `pid` (every command we start leads its own session).
pub fn kill_group(pid: u32) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;

    #[test]
    fn registered_children_are_reaped_with_their_status() {
        let children = Children::start();
        let (pid, _child) = children
            .spawn(
                Command::new("/bin/sh")
                    .args(["-c", "exit 3"])
                    .process_group(0),
            )
            .unwrap();
        let exit = children.wait(pid, Some(Instant::now() + Duration::from_secs(10)));
        assert_eq!(
            exit,
            Some(Exit {
                code: Some(3),
                signal: None
            })
        );
        let (pid, _child) = children
            .spawn(Command::new("/bin/sh").args(["-c", "sleep 5"]))
            .unwrap();
        assert_eq!(
            children.wait(pid, Some(Instant::now() + Duration::from_millis(200))),
            None
        );
        kill_group(pid);
        rustix::process::kill_process(
            rustix::process::Pid::from_raw(pid as i32).unwrap(),
            rustix::process::Signal::KILL,
        )
        .unwrap();
        let killed = children.wait(pid, Some(Instant::now() + Duration::from_secs(10)));
        assert_eq!(killed.and_then(|e| e.signal), Some(9));
    }
}
