//! What a sandbox asks of its guest: commands with streamed output ([`HostMessage::Run`],
//! [`HostMessage::Kill`]), files read, written and listed as the sandbox's user, and the wall
//! clock set after a restore.
//!
//! [`HostMessage::Run`]: nullspace_init::protocol::HostMessage::Run
//! [`HostMessage::Kill`]: nullspace_init::protocol::HostMessage::Kill

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nullspace_init::protocol::{
    AgentMessage, DirEntry, RunSpec, StartSpec, Stream, MAX_CHUNK_BYTES, MAX_DIR_ENTRIES,
};
use nullspace_init::user::Identity;

use crate::children::kill_group;
use crate::start::{Agent, Runtime};

/// Commands started by [`run`] and still running, and kills that came before their command
/// started.
#[derive(Default)]
struct RunTable {
    /// Run id → process id.
    running: HashMap<u64, u32>,
    /// Run ids killed before they started (a kill can overtake the start, which runs on its
    /// own thread).
    killed_early: std::collections::HashSet<u64>,
}

/// The table of runs, shared by the main loop and the run threads.
#[derive(Clone, Default)]
pub struct Runs {
    table: Arc<Mutex<RunTable>>,
}

impl Runs {
    /// Records run `id` as process `pid`; false when it was killed before it started (the
    /// caller kills it).
    fn insert(&self, id: u64, pid: u32) -> bool {
        let Ok(mut table) = self.table.lock() else {
            return true;
        };
        if table.killed_early.remove(&id) {
            return false;
        }
        table.running.insert(id, pid);
        true
    }

    fn remove(&self, id: u64) {
        if let Ok(mut table) = self.table.lock() {
            table.running.remove(&id);
            table.killed_early.remove(&id);
        }
    }

    /// Kills run `id`'s process group; a run that has not started yet is killed as it starts.
    pub fn kill(&self, id: u64) {
        let Ok(mut table) = self.table.lock() else {
            return;
        };
        match table.running.get(&id).copied() {
            Some(pid) => kill_group(pid),
            // Bounded: the host kills only runs it started.
            None if table.killed_early.len() < 4096 => {
                table.killed_early.insert(id);
            }
            None => {}
        }
    }
}

/// The runtime a request runs with: the template's defaults with the request's user, cwd and
/// env over them.
fn request_runtime(
    agent: &Agent,
    user: Option<&str>,
    cwd: Option<&str>,
    env: &[(String, String)],
) -> Result<Runtime, String> {
    let defaults = agent.spec();
    let mut merged = defaults.env.clone();
    for (name, value) in env {
        merged.retain(|(k, _)| k != name);
        merged.push((name.clone(), value.clone()));
    }
    let spec = StartSpec {
        env: merged,
        user: user.map(str::to_string).or(defaults.user.clone()),
        workdir: cwd.map(str::to_string).or(defaults.workdir.clone()),
        ..defaults
    };
    let runtime = Runtime::describe(&spec)?;
    if !Path::new(&runtime.workdir).is_dir() {
        return Err(format!(
            "working directory {}: no such directory",
            runtime.workdir
        ));
    }
    Ok(runtime)
}

/// Forwards a pipe's bytes as they come, until it closes.
fn forward_chunks(mut pipe: impl Read, id: u64, stream: Stream, agent: &Agent) {
    let mut buffer = vec![0u8; 32 << 10];
    loop {
        match pipe.read(&mut buffer) {
            Ok(0) | Err(_) => return,
            // `send` waits while the host's queue is full: a fast writer is slowed, never cut.
            Ok(n) => agent.host.send(AgentMessage::Output {
                id,
                stream,
                data: buffer[..n].to_vec(),
            }),
        }
    }
}

/// Starts `spec` on its own thread; its output and its end go to the host.
pub fn run(agent: Arc<Agent>, runs: Runs, spec: RunSpec) {
    std::thread::spawn(move || {
        let id = spec.id;
        let failed = |error: String| AgentMessage::RunEnded {
            id,
            code: None,
            signal: None,
            timed_out: false,
            error: Some(error),
        };
        let runtime =
            match request_runtime(&agent, spec.user.as_deref(), spec.cwd.as_deref(), &spec.env) {
                Ok(runtime) => runtime,
                Err(e) => {
                    runs.remove(id);
                    return agent.host.send(failed(e));
                }
            };
        let (mut command, shown) = match (&spec.shell, spec.argv.split_first()) {
            (Some(shell), _) => (runtime.shell(shell), format!("/bin/sh -c {shell:?}")),
            (None, Some((program, args))) => (runtime.command(program, args), program.clone()),
            (None, None) => return agent.host.send(failed("an empty command".into())),
        };
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
        let (pid, mut child) = match agent.children.spawn(&mut command) {
            Ok(spawned) => spawned,
            Err(e) => {
                return agent.host.send(failed(format!(
                    "starting {shown} as uid {} in {}: {e}",
                    runtime.identity.uid, runtime.workdir
                )))
            }
        };
        if !runs.insert(id, pid) {
            kill_group(pid);
        }
        agent.host.send(AgentMessage::RunStarted { id, pid });
        let (out, err) = (child.stdout.take(), child.stderr.take());
        let readers: Vec<_> = [(
            out.map(|o| Box::new(o) as Box<dyn Read + Send>),
            Stream::Stdout,
        )]
        .into_iter()
        .chain([(
            err.map(|e| Box::new(e) as Box<dyn Read + Send>),
            Stream::Stderr,
        )])
        .filter_map(|(pipe, stream)| pipe.map(|p| (p, stream)))
        .map(|(pipe, stream)| {
            let agent = agent.clone();
            std::thread::spawn(move || forward_chunks(pipe, id, stream, &agent))
        })
        .collect();
        let deadline =
            (spec.timeout_ms > 0).then(|| Instant::now() + Duration::from_millis(spec.timeout_ms));
        let exit = agent.children.wait(pid, deadline);
        let timed_out = exit.is_none();
        let exit = if timed_out {
            kill_group(pid);
            agent
                .children
                .wait(pid, Some(Instant::now() + Duration::from_secs(5)))
        } else {
            exit
        };
        runs.remove(id);
        // Output still in the pipes comes first. Something the command left running in the
        // background may hold them open: it keeps running, but the end is not held up for it.
        let drained = Instant::now() + Duration::from_millis(300);
        for reader in readers {
            while !reader.is_finished() && Instant::now() < drained {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        agent.host.send(AgentMessage::RunEnded {
            id,
            code: if timed_out {
                None
            } else {
                exit.and_then(|e| e.code)
            },
            signal: exit.and_then(|e| e.signal),
            timed_out,
            error: None,
        });
    });
}

/// A failed file request's kind and message.
struct FileError {
    kind: &'static str,
    message: String,
}

fn file_error(path: &Path, e: std::io::Error) -> FileError {
    use std::io::ErrorKind;
    let kind = match e.kind() {
        ErrorKind::NotFound => "not_found",
        ErrorKind::PermissionDenied => "permission_denied",
        ErrorKind::IsADirectory => "is_a_directory",
        ErrorKind::NotADirectory => "not_a_directory",
        _ => "io",
    };
    FileError {
        kind,
        message: format!("{}: {e}", path.display()),
    }
}

/// Runs `operation` on a thread of its own that takes on `identity` first: Linux credentials
/// belong to a thread, so the agent's other threads stay root, and the file's permissions
/// decide exactly as they would for the user's own processes (new files are the user's).
fn as_user<T: Send + 'static>(
    identity: &Identity,
    operation: impl FnOnce() -> Result<T, FileError> + Send + 'static,
) -> Result<T, FileError> {
    let groups: Vec<rustix::process::Gid> = identity
        .groups
        .iter()
        .map(|g| rustix::process::Gid::from_raw(*g))
        .collect();
    let gid = rustix::process::Gid::from_raw(identity.gid);
    let uid = rustix::process::Uid::from_raw(identity.uid);
    std::thread::spawn(move || {
        let switched = rustix::thread::set_thread_groups(&groups)
            .and_then(|()| rustix::thread::set_thread_res_gid(gid, gid, gid))
            .and_then(|()| rustix::thread::set_thread_res_uid(uid, uid, uid));
        if let Err(e) = switched {
            return Err(FileError {
                kind: "io",
                message: format!("taking on uid {} gid {}: {e}", uid.as_raw(), gid.as_raw()),
            });
        }
        operation()
    })
    .join()
    .unwrap_or_else(|_| {
        Err(FileError {
            kind: "io",
            message: "the file operation panicked".into(),
        })
    })
}

/// A file request's path and identity.
fn file_target(
    agent: &Agent,
    path: &str,
    user: Option<&str>,
) -> Result<(PathBuf, Identity), FileError> {
    let defaults = agent.spec();
    let spec = StartSpec {
        user: user.map(str::to_string).or(defaults.user.clone()),
        ..defaults
    };
    let runtime = Runtime::describe(&spec).map_err(|message| FileError {
        kind: "invalid",
        message,
    })?;
    if path.is_empty() {
        return Err(FileError {
            kind: "invalid",
            message: "an empty path".into(),
        });
    }
    Ok((Path::new(&runtime.workdir).join(path), runtime.identity))
}

fn write_chunk(path: &Path, data: &[u8], append: bool) -> Result<u64, FileError> {
    if !append {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| file_error(parent, e))?;
        }
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(!append)
        .append(append)
        .mode(0o644)
        .open(path)
        .map_err(|e| file_error(path, e))?;
    file.write_all(data).map_err(|e| file_error(path, e))?;
    file.metadata()
        .map(|m| m.len())
        .map_err(|e| file_error(path, e))
}

fn read_chunk(path: &Path, offset: u64, length: u32) -> Result<(Vec<u8>, u64), FileError> {
    let mut file = std::fs::File::open(path).map_err(|e| file_error(path, e))?;
    let metadata = file.metadata().map_err(|e| file_error(path, e))?;
    if metadata.is_dir() {
        return Err(FileError {
            kind: "is_a_directory",
            message: format!("{}: is a directory", path.display()),
        });
    }
    file.seek(SeekFrom::Start(offset))
        .map_err(|e| file_error(path, e))?;
    let mut data = Vec::new();
    file.take(u64::from(length).min(MAX_CHUNK_BYTES as u64))
        .read_to_end(&mut data)
        .map_err(|e| file_error(path, e))?;
    Ok((data, metadata.len()))
}

fn list(path: &Path) -> Result<(Vec<DirEntry>, bool), FileError> {
    let mut entries = Vec::new();
    let mut truncated = false;
    for entry in std::fs::read_dir(path).map_err(|e| file_error(path, e))? {
        let entry = entry.map_err(|e| file_error(path, e))?;
        if entries.len() == MAX_DIR_ENTRIES {
            truncated = true;
            break;
        }
        let Ok(metadata) = entry.path().symlink_metadata() else {
            continue;
        };
        let kind = if metadata.is_symlink() {
            "symlink"
        } else if metadata.is_dir() {
            "dir"
        } else if metadata.is_file() {
            "file"
        } else {
            "other"
        };
        entries.push(DirEntry {
            name: entry.file_name().to_string_lossy().into_owned(),
            kind: kind.into(),
            size: metadata.len(),
            mode: metadata.mode() & 0o7777,
            uid: metadata.uid(),
            gid: metadata.gid(),
        });
    }
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    Ok((entries, truncated))
}

/// What a file request asks.
pub enum FileRequest {
    /// Write (or append) a chunk.
    Write {
        /// The chunk.
        data: Vec<u8>,
        /// Append instead of replace.
        append: bool,
    },
    /// Read a chunk.
    Read {
        /// From here.
        offset: u64,
        /// At most this much.
        length: u32,
    },
    /// List a directory.
    List,
}

/// Answers a file request on its own thread.
pub fn file(agent: Arc<Agent>, id: u64, path: String, user: Option<String>, request: FileRequest) {
    std::thread::spawn(move || {
        let answer =
            file_target(&agent, &path, user.as_deref()).and_then(
                |(path, identity)| match request {
                    FileRequest::Write { data, append } => {
                        as_user(&identity, move || write_chunk(&path, &data, append))
                            .map(|size| AgentMessage::FileWritten { id, size })
                    }
                    FileRequest::Read { offset, length } => {
                        as_user(&identity, move || read_chunk(&path, offset, length))
                            .map(|(data, size)| AgentMessage::FileData { id, data, size })
                    }
                    FileRequest::List => {
                        as_user(&identity, move || list(&path)).map(|(entries, truncated)| {
                            AgentMessage::DirListing {
                                id,
                                entries,
                                truncated,
                            }
                        })
                    }
                },
            );
        agent
            .host
            .send(answer.unwrap_or_else(|e| AgentMessage::FileFailed {
                id,
                kind: e.kind.into(),
                message: e.message,
            }));
    });
}

/// Sets the wall clock to `unix_ms`.
pub fn set_clock(unix_ms: u64) -> Result<(), String> {
    let time = rustix::time::Timespec {
        tv_sec: (unix_ms / 1000) as i64,
        tv_nsec: ((unix_ms % 1000) * 1_000_000) as _,
    };
    rustix::time::clock_settime(rustix::time::ClockId::Realtime, time)
        .map_err(|e| format!("setting the clock: {e}"))
}

/// `RNDRESEEDCRNG` (`_IO('R', 0x07)`): reseed the kernel's CRNG from its pool now.
const RNDRESEEDCRNG: libc::c_ulong = 0x5207;

/// Mixes `entropy` into the kernel's pool and reseeds its CRNG, so that sandboxes restored from
/// one snapshot stop sharing the random numbers the guest hands out from now on.
#[allow(unsafe_code)]
pub fn reseed(entropy: &[u8]) -> Result<(), String> {
    let mut random = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/urandom")
        .map_err(|e| format!("opening /dev/urandom: {e}"))?;
    random
        .write_all(entropy)
        .map_err(|e| format!("mixing in entropy: {e}"))?;
    use std::os::fd::AsRawFd;
    // SAFETY: RNDRESEEDCRNG takes no argument and only reads the descriptor, which is open
    // (`random` lives until the end of this function).
    let done = unsafe { libc::ioctl(random.as_raw_fd(), RNDRESEEDCRNG as _) };
    if done != 0 {
        return Err(format!(
            "reseeding the CRNG: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}
