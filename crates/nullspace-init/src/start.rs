//! The runtime defaults and the start command: env, user, workdir applied as Docker does; the
//! command runs with `/bin/sh -c` in its own session, its output goes to the host line by line,
//! and its readiness probe runs beside it.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use nullspace_init::protocol::{
    truncate_line, AgentMessage, StartSpec, StartState, Stream, MAX_LOG_LINE_BYTES,
};
use nullspace_init::user::{self, Identity};

use crate::channel::Sender;
use crate::children::Children;

/// Docker's default `PATH`, used when the env has none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Who and where commands run: the resolved runtime defaults.
#[derive(Clone)]
pub struct Runtime {
    /// The environment, complete (`PATH`, `HOME`, `HOSTNAME` filled in as Docker does).
    pub env: Vec<(String, String)>,
    /// The user.
    pub identity: Identity,
    /// The working directory.
    pub workdir: String,
}

impl Default for Runtime {
    fn default() -> Runtime {
        Runtime {
            env: vec![
                ("PATH".into(), DEFAULT_PATH.into()),
                ("HOME".into(), "/root".into()),
            ],
            identity: Identity {
                uid: 0,
                gid: 0,
                groups: vec![0],
                home: "/root".into(),
            },
            workdir: "/".into(),
        }
    }
}

impl Runtime {
    /// The runtime `spec` describes; its workdir is created when absent (as Docker does).
    fn resolve(spec: &StartSpec) -> Result<Runtime, String> {
        let runtime = Runtime::describe(spec)?;
        if !std::path::Path::new(&runtime.workdir).is_dir() {
            std::fs::create_dir_all(&runtime.workdir)
                .map_err(|e| format!("creating workdir {}: {e}", runtime.workdir))?;
        }
        Ok(runtime)
    }

    /// The runtime `spec` describes (reads `/etc/passwd` and `/etc/group`, creates nothing).
    pub fn describe(spec: &StartSpec) -> Result<Runtime, String> {
        let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
        let identity = user::resolve(
            spec.user.as_deref(),
            &read("/etc/passwd"),
            &read("/etc/group"),
        )
        .map_err(|e| format!("runtime user: {e}"))?;
        let mut env = spec.env.clone();
        let has = |env: &[(String, String)], key: &str| env.iter().any(|(k, _)| k == key);
        if !has(&env, "PATH") {
            env.push(("PATH".into(), DEFAULT_PATH.into()));
        }
        if !has(&env, "HOME") {
            env.push(("HOME".into(), identity.home.clone()));
        }
        if !has(&env, "HOSTNAME") {
            env.push(("HOSTNAME".into(), spec.hostname.clone()));
        }
        let workdir = spec.workdir.clone().unwrap_or_else(|| "/".into());
        Ok(Runtime {
            env,
            identity,
            workdir,
        })
    }

    /// `/bin/sh -c command` as this runtime, in a new session, stdin from `/dev/null`.
    pub fn shell(&self, command: &str) -> Command {
        self.command("/bin/sh", &["-c".to_string(), command.to_string()])
    }

    /// `program args` as this runtime, in a new session, stdin from `/dev/null`. A program
    /// without a `/` is looked up on this runtime's `PATH` (not the agent's).
    #[allow(unsafe_code)]
    pub fn command(&self, program: &str, args: &[String]) -> Command {
        let program = if program.contains('/') {
            program.to_string()
        } else {
            self.lookup(program)
        };
        let mut shell = Command::new(program);
        shell
            .args(args)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&self.workdir)
            .stdin(Stdio::null());
        let groups: Vec<rustix::process::Gid> = self
            .identity
            .groups
            .iter()
            .map(|g| rustix::process::Gid::from_raw(*g))
            .collect();
        let gid = rustix::process::Gid::from_raw(self.identity.gid);
        let uid = rustix::process::Uid::from_raw(self.identity.uid);
        // SAFETY: the closure runs in the forked child before exec, where only async-signal-safe
        // work is allowed: it makes four raw system calls through rustix (setsid, setgroups,
        // setresgid, setresuid) and allocates nothing (`groups` was built before the fork). The
        // per-thread rustix calls affect the whole process because the child has one thread.
        unsafe {
            shell.pre_exec(move || {
                rustix::process::setsid()?;
                rustix::thread::set_thread_groups(&groups)?;
                rustix::thread::set_thread_res_gid(gid, gid, gid)?;
                rustix::thread::set_thread_res_uid(uid, uid, uid)?;
                Ok(())
            });
        }
        shell
    }
}

impl Runtime {
    /// `program` on this runtime's `PATH` (itself when not found, so the error names it).
    fn lookup(&self, program: &str) -> String {
        let path = self
            .env
            .iter()
            .rev()
            .find(|(k, _)| k == "PATH")
            .map_or(DEFAULT_PATH, |(_, v)| v.as_str());
        path.split(':')
            .filter(|dir| !dir.is_empty())
            .map(|dir| format!("{dir}/{program}"))
            .find(|candidate| std::path::Path::new(candidate).is_file())
            .unwrap_or_else(|| program.to_string())
    }
}

/// The agent's state: the runtime and the start command.
pub struct Agent {
    /// The reaper.
    pub children: Children,
    /// To the host.
    pub host: Sender,
    runtime: Mutex<Option<Runtime>>,
    /// The runtime defaults as the host sent them (sandbox commands derive theirs from it).
    spec: Mutex<Option<StartSpec>>,
    state: Mutex<StartState>,
    started: AtomicBool,
    /// Set when the start command ended (stops its readiness probe).
    pub exited: Arc<AtomicBool>,
}

impl Agent {
    /// An agent before `Start`.
    pub fn new(children: Children, host: Sender) -> Agent {
        Agent {
            children,
            host,
            runtime: Mutex::new(None),
            spec: Mutex::new(None),
            state: Mutex::new(StartState::NotStarted),
            started: AtomicBool::new(false),
            exited: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The start command's state.
    pub fn state(&self) -> StartState {
        self.state
            .lock()
            .map(|s| s.clone())
            .unwrap_or(StartState::NotStarted)
    }

    /// The runtime for exec commands (root in `/` before `Start`).
    pub fn runtime(&self) -> Runtime {
        self.runtime
            .lock()
            .ok()
            .and_then(|r| r.clone())
            .unwrap_or_default()
    }

    /// The runtime defaults the host sent (an empty spec, root in `/`, before `Start`).
    pub fn spec(&self) -> StartSpec {
        self.spec
            .lock()
            .ok()
            .and_then(|s| s.clone())
            .unwrap_or_default()
    }

    /// Applies `spec` and starts the start command and its probe (once per boot).
    pub fn start(self: &Arc<Self>, spec: StartSpec) {
        if self.started.swap(true, Ordering::SeqCst) {
            self.host.send(AgentMessage::StartFailed {
                message: "the start command was already started in this VM".into(),
            });
            return;
        }
        if let Err(e) = rustix::system::sethostname(spec.hostname.as_bytes()) {
            crate::console(&format!("sethostname: {e}"));
        }
        if let Some(network) = &spec.network {
            if let Err(e) = crate::net::configure(network) {
                self.host.send(AgentMessage::StartFailed {
                    message: format!("configuring the network (eth0): {e}"),
                });
                return;
            }
        }
        let runtime = match Runtime::resolve(&spec) {
            Ok(runtime) => runtime,
            Err(message) => {
                self.host.send(AgentMessage::StartFailed { message });
                return;
            }
        };
        if let Ok(mut slot) = self.runtime.lock() {
            *slot = Some(runtime.clone());
        }
        if let Ok(mut slot) = self.spec.lock() {
            *slot = Some(spec.clone());
        }
        let started_at = std::time::Instant::now();
        if let Some(command) = &spec.command {
            let mut shell = runtime.shell(command);
            shell.stdout(Stdio::piped()).stderr(Stdio::piped());
            let (pid, mut child) = match self.children.spawn(&mut shell) {
                Ok(spawned) => spawned,
                Err(e) => {
                    self.host.send(AgentMessage::StartFailed {
                        message: format!(
                            "starting /bin/sh -c {command:?} as uid {} in {}: {e}",
                            runtime.identity.uid, runtime.workdir
                        ),
                    });
                    return;
                }
            };
            if let Some(out) = child.stdout.take() {
                forward_lines(out, Stream::Stdout, self.host.clone());
            }
            if let Some(err) = child.stderr.take() {
                forward_lines(err, Stream::Stderr, self.host.clone());
            }
            let running = StartState::Running {
                pid,
                start_ticks: start_ticks(pid).unwrap_or(0),
            };
            self.set_state(running.clone());
            self.host.send(AgentMessage::Started { start: running });
            let agent = self.clone();
            std::thread::spawn(move || {
                if let Some(exit) = agent.children.wait(pid, None) {
                    let ended = StartState::Exited {
                        code: exit.code,
                        signal: exit.signal,
                    };
                    agent.exited.store(true, Ordering::SeqCst);
                    agent.set_state(ended.clone());
                    agent.host.send(AgentMessage::Exited { start: ended });
                }
            });
        }
        if let Some(probe) = spec.readiness {
            let agent = self.clone();
            std::thread::spawn(move || crate::readiness::run(&agent, &probe, started_at));
        }
    }

    fn set_state(&self, state: StartState) {
        if let Ok(mut slot) = self.state.lock() {
            *slot = state;
        }
    }
}

fn forward_lines(pipe: impl Read + Send + 'static, stream: Stream, host: Sender) {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut buffer = Vec::new();
        loop {
            buffer.clear();
            // Bounded: a line without a newline is forwarded in pieces.
            match (&mut reader)
                .take(MAX_LOG_LINE_BYTES as u64)
                .read_until(b'\n', &mut buffer)
            {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    let mut line = String::from_utf8_lossy(&buffer)
                        .trim_end_matches(['\n', '\r'])
                        .to_string();
                    truncate_line(&mut line, MAX_LOG_LINE_BYTES);
                    host.log(AgentMessage::Log { stream, line });
                }
            }
        }
    });
}

/// Field 22 of `/proc/PID/stat`: start time in clock ticks since boot.
pub fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count from its last ')'.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}
