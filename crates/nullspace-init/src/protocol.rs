//! The channel between the host and the agent: frames of a 4-byte big-endian length and a JSON
//! body, at most [`MAX_FRAME_BYTES`]. The host always speaks first after connecting
//! ([`HostMessage::Hello`]), so a host that connects again after a restore gets a fresh hello;
//! the agent never waits on the channel in its main loop (guest writes block while no host is
//! connected).
//!
//! The guest can be hostile (the start command runs as root there and can open the port): the
//! host treats every [`AgentMessage`] as untrusted input, bounded in size and number.

use std::io::{Read, Write};

use serde::{Deserialize, Serialize};

/// Largest frame either side accepts.
pub const MAX_FRAME_BYTES: usize = 1 << 20;
/// Longest log line forwarded; longer lines are cut and marked.
pub const MAX_LOG_LINE_BYTES: usize = 8 << 10;
/// Most bytes of a command's stdout or stderr returned by [`HostMessage::Exec`].
pub const MAX_EXEC_OUTPUT_BYTES: usize = 256 << 10;
/// Most bytes of data in one [`AgentMessage::Output`], [`AgentMessage::FileData`] or
/// [`HostMessage::WriteFile`] (base64 makes it 4/3 larger, still well inside a frame).
pub const MAX_CHUNK_BYTES: usize = 256 << 10;
/// Most entries one [`AgentMessage::DirListing`] carries.
pub const MAX_DIR_ENTRIES: usize = 2000;

/// What can go wrong reading or writing a frame.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The channel failed or closed.
    #[error("agent channel: {0}")]
    Io(#[from] std::io::Error),
    /// A frame announced more than [`MAX_FRAME_BYTES`].
    #[error("agent channel: frame of {0} bytes is over the {MAX_FRAME_BYTES}-byte limit")]
    TooLarge(usize),
    /// A frame's body is not a message of this protocol.
    #[error("agent channel: bad message: {0}")]
    Malformed(#[from] serde_json::Error),
}

/// Messages from the host to the agent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum HostMessage {
    /// The host (re)connected: answer with [`AgentMessage::Hello`].
    Hello,
    /// Apply the runtime defaults and start the start command (once per boot).
    Start(StartSpec),
    /// Run a shell command to completion as the runtime user and return its output.
    Exec {
        /// Echoed in the result.
        id: u64,
        /// Run with `/bin/sh -c`.
        command: String,
        /// Killed (its whole process group) after this long.
        timeout_ms: u64,
    },
    /// Flush every filesystem to disk (before a snapshot).
    Sync,
    /// Report the start command's state.
    Status,
    /// Start a command of a sandbox; its output streams as [`AgentMessage::Output`] and it ends
    /// with [`AgentMessage::RunEnded`].
    Run(RunSpec),
    /// Kill a command started by [`HostMessage::Run`] (its whole process group).
    Kill {
        /// The run's id.
        id: u64,
    },
    /// Write a chunk of a file as `user` (parents created as needed); answered with
    /// [`AgentMessage::FileWritten`] or [`AgentMessage::FileFailed`].
    WriteFile {
        /// Echoed in the answer.
        id: u64,
        /// Absolute, or relative to the runtime workdir.
        path: String,
        /// At most [`MAX_CHUNK_BYTES`].
        #[serde(with = "base64_bytes")]
        data: Vec<u8>,
        /// Append to the file (the later chunks of one write) instead of replacing it.
        append: bool,
        /// Who writes; the runtime user when absent.
        user: Option<String>,
    },
    /// Read up to `length` bytes of a file from `offset` as `user`; answered with
    /// [`AgentMessage::FileData`] or [`AgentMessage::FileFailed`].
    ReadFile {
        /// Echoed in the answer.
        id: u64,
        /// Absolute, or relative to the runtime workdir.
        path: String,
        /// Where to start.
        offset: u64,
        /// At most [`MAX_CHUNK_BYTES`].
        length: u32,
        /// Who reads; the runtime user when absent.
        user: Option<String>,
    },
    /// List a directory as `user`; answered with [`AgentMessage::DirListing`] or
    /// [`AgentMessage::FileFailed`].
    ListDir {
        /// Echoed in the answer.
        id: u64,
        /// Absolute, or relative to the runtime workdir.
        path: String,
        /// Who lists; the runtime user when absent.
        user: Option<String>,
    },
    /// Set the guest's wall clock (a restored guest wakes with the snapshot's time) and reseed
    /// its random number generator (every sandbox of a snapshot wakes with the same kernel RNG
    /// state); answered with [`AgentMessage::ClockSet`].
    SetClock {
        /// Milliseconds since the Unix epoch.
        unix_ms: u64,
        /// Fresh host randomness mixed into the guest's pool before a reseed.
        #[serde(with = "base64_bytes")]
        entropy: Vec<u8>,
    },
}

/// A command to run in a sandbox.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RunSpec {
    /// Names its output and end.
    pub id: u64,
    /// `/bin/sh -c command` when set, else `argv`.
    pub shell: Option<String>,
    /// Program and arguments, run directly (looked up on the command's `PATH`).
    pub argv: Vec<String>,
    /// Set over the runtime env, in order (a name given again replaces the earlier value).
    pub env: Vec<(String, String)>,
    /// Who runs it; the runtime user when absent.
    pub user: Option<String>,
    /// Where it runs; the runtime workdir when absent. Must exist.
    pub cwd: Option<String>,
    /// Killed (its process group) after this many milliseconds; 0 for no limit.
    pub timeout_ms: u64,
}

/// One entry of a directory listing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEntry {
    /// The entry's name.
    pub name: String,
    /// `file`, `dir`, `symlink` or `other`.
    pub kind: String,
    /// Size in bytes.
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
}

/// Bytes as base64 text in JSON.
mod base64_bytes {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], out: S) -> Result<S::Ok, S::Error> {
        out.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(input: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(input)?;
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(serde::de::Error::custom)
    }
}

/// The runtime defaults and start command of a template.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StartSpec {
    /// The guest's host name.
    pub hostname: String,
    /// Environment of the start command and of readiness and exec commands, in order.
    pub env: Vec<(String, String)>,
    /// `name`, `uid`, `name:group` or `uid:gid`; root when absent.
    pub user: Option<String>,
    /// Working directory (created if absent, as Docker does); `/` when absent.
    pub workdir: Option<String>,
    /// Run with `/bin/sh -c` in its own session; nothing runs when absent.
    pub command: Option<String>,
    /// When the start command counts as ready.
    pub readiness: Option<Probe>,
    /// `eth0`'s configuration; no network when absent.
    #[serde(default)]
    pub network: Option<NetworkConfig>,
}

/// The guest's IPv4 network on `eth0`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkConfig {
    /// Its address.
    pub address: std::net::Ipv4Addr,
    /// Prefix length.
    pub prefix: u8,
    /// Default route.
    pub gateway: std::net::Ipv4Addr,
    /// Resolver.
    pub dns: std::net::Ipv4Addr,
}

/// A readiness probe with its timing (Docker HEALTHCHECK semantics: attempts every
/// `interval_ms`, each bounded by `timeout_ms`; failures in the first `start_period_ms` don't
/// count; `retries` counted failures fail it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Probe {
    /// What is checked.
    pub check: ProbeCheck,
    /// Milliseconds between attempts.
    pub interval_ms: u64,
    /// Milliseconds one attempt may take.
    pub timeout_ms: u64,
    /// Milliseconds after start during which failures don't count.
    pub start_period_ms: u64,
    /// Counted failures that fail the probe (at least one).
    pub retries: u32,
}

/// One kind of readiness check, run inside the guest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ProbeCheck {
    /// Something accepts TCP connections on 127.0.0.1:`port`.
    Tcp {
        /// The port.
        port: u16,
    },
    /// A GET of `url` (an `http://` URL on a loopback host) answers 2xx or 3xx.
    Http {
        /// The URL.
        url: String,
    },
    /// `path` exists.
    File {
        /// Absolute path.
        path: String,
    },
    /// A process of this name runs (its `comm` or the base name of its `argv[0]`).
    Process {
        /// The name.
        name: String,
    },
    /// Ready after this long, whatever runs.
    Wait {
        /// Milliseconds.
        ms: u64,
    },
    /// `/bin/sh -c command` exits 0 (as the runtime user, with the runtime env).
    Command {
        /// The command.
        command: String,
    },
}

/// Which output stream a log line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// The start command's state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum StartState {
    /// Nothing started yet (or no start command).
    NotStarted,
    /// Running as `pid`, started `start_ticks` clock ticks after boot (`/proc/PID/stat` field
    /// 22): the pair identifies the process across a snapshot and restore.
    Running {
        /// Its process id.
        pid: u32,
        /// Its start time since boot in clock ticks.
        start_ticks: u64,
    },
    /// It ended.
    Exited {
        /// Exit status, when it exited.
        code: Option<i32>,
        /// Signal number, when a signal ended it.
        signal: Option<i32>,
    },
}

/// Messages from the agent to the host.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AgentMessage {
    /// Answer to [`HostMessage::Hello`].
    Hello {
        /// [`crate::AGENT_VERSION`].
        version: String,
        /// Milliseconds since the guest booted.
        uptime_ms: u64,
        /// The start command's state.
        start: StartState,
    },
    /// A line the start command wrote.
    Log {
        /// Which stream.
        stream: Stream,
        /// The line, without its newline (cut at [`MAX_LOG_LINE_BYTES`]).
        line: String,
    },
    /// Lines dropped because the host did not read fast enough.
    LogsDropped {
        /// How many.
        count: u64,
    },
    /// The start command could not be started.
    StartFailed {
        /// Why, naming the setting at fault.
        message: String,
    },
    /// The start command runs.
    Started {
        /// Its state ([`StartState::Running`]).
        start: StartState,
    },
    /// The start command ended.
    Exited {
        /// [`StartState::Exited`].
        start: StartState,
    },
    /// One readiness attempt.
    ProbeResult {
        /// 1-based attempt number.
        attempt: u32,
        /// Whether it passed.
        ok: bool,
        /// What it saw.
        detail: String,
    },
    /// The readiness probe passed.
    Ready {
        /// Milliseconds from start to ready.
        after_ms: u64,
    },
    /// The readiness probe failed for good.
    NotReady {
        /// Attempts made.
        attempts: u32,
        /// The last attempt's result.
        detail: String,
    },
    /// Result of [`HostMessage::Exec`].
    ExecResult {
        /// The request's id.
        id: u64,
        /// Exit status (`None` when killed by a signal or timed out).
        code: Option<i32>,
        /// Captured stdout (bounded, lossy UTF-8).
        stdout: String,
        /// Captured stderr (bounded, lossy UTF-8).
        stderr: String,
        /// Whether it was killed at its timeout.
        timed_out: bool,
        /// Why it could not run, if it could not.
        error: Option<String>,
    },
    /// Filesystems are synced.
    Synced,
    /// Answer to [`HostMessage::Status`].
    Status {
        /// The start command's state.
        start: StartState,
    },
    /// A [`HostMessage::Run`] command started.
    RunStarted {
        /// The run's id.
        id: u64,
        /// Its process id in the guest.
        pid: u32,
    },
    /// Output of a [`HostMessage::Run`] command, as it came.
    Output {
        /// The run's id.
        id: u64,
        /// Which stream.
        stream: Stream,
        /// The bytes (at most [`MAX_CHUNK_BYTES`]).
        #[serde(with = "base64_bytes")]
        data: Vec<u8>,
    },
    /// A [`HostMessage::Run`] command ended, or could not start.
    RunEnded {
        /// The run's id.
        id: u64,
        /// Exit status, when it exited.
        code: Option<i32>,
        /// Signal number, when a signal ended it.
        signal: Option<i32>,
        /// Killed at its timeout.
        timed_out: bool,
        /// Why it could not start, if it could not.
        error: Option<String>,
    },
    /// A [`HostMessage::WriteFile`] chunk is written.
    FileWritten {
        /// The request's id.
        id: u64,
        /// The file's size now.
        size: u64,
    },
    /// Answer to [`HostMessage::ReadFile`].
    FileData {
        /// The request's id.
        id: u64,
        /// The bytes read.
        #[serde(with = "base64_bytes")]
        data: Vec<u8>,
        /// The file's whole size.
        size: u64,
    },
    /// Answer to [`HostMessage::ListDir`].
    DirListing {
        /// The request's id.
        id: u64,
        /// Entries sorted by name, at most [`MAX_DIR_ENTRIES`].
        entries: Vec<DirEntry>,
        /// Whether entries were left off.
        truncated: bool,
    },
    /// A file request failed.
    FileFailed {
        /// The request's id.
        id: u64,
        /// `not_found`, `permission_denied`, `is_a_directory`, `not_a_directory`, `too_large`
        /// or `io`.
        kind: String,
        /// What went wrong, naming the path.
        message: String,
    },
    /// The clock is set.
    ClockSet,
}

/// Encodes one frame.
pub fn encode<T: Serialize>(message: &T) -> Result<Vec<u8>, FrameError> {
    let body = serde_json::to_vec(message)?;
    if body.len() > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge(body.len()));
    }
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    Ok(frame)
}

/// The body length a frame header announces, checked against [`MAX_FRAME_BYTES`].
pub fn body_length(header: [u8; 4]) -> Result<usize, FrameError> {
    let length = u32::from_be_bytes(header) as usize;
    if length > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge(length));
    }
    Ok(length)
}

/// Decodes a frame body.
pub fn decode<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, FrameError> {
    Ok(serde_json::from_slice(body)?)
}

/// Writes one frame (blocking).
pub fn write_frame<T: Serialize>(out: &mut impl Write, message: &T) -> Result<(), FrameError> {
    out.write_all(&encode(message)?)?;
    out.flush()?;
    Ok(())
}

/// Reads one frame (blocking).
pub fn read_frame<T: for<'de> Deserialize<'de>>(input: &mut impl Read) -> Result<T, FrameError> {
    let mut header = [0u8; 4];
    input.read_exact(&mut header)?;
    let mut body = vec![0u8; body_length(header)?];
    input.read_exact(&mut body)?;
    decode(&body)
}

/// Cuts `line` to at most `limit` bytes on a character boundary, marking the cut.
pub fn truncate_line(line: &mut String, limit: usize) {
    if line.len() > limit {
        let mut end = limit;
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        line.truncate(end);
        line.push_str(" [cut]");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_oversized_ones_are_refused() {
        let message = HostMessage::Start(StartSpec {
            hostname: "t".into(),
            env: vec![("A".into(), "1".into())],
            command: Some("sleep 1".into()),
            readiness: Some(Probe {
                check: ProbeCheck::Tcp { port: 80 },
                interval_ms: 10,
                timeout_ms: 20,
                start_period_ms: 0,
                retries: 3,
            }),
            ..StartSpec::default()
        });
        let frame = encode(&message).unwrap();
        let back: HostMessage = read_frame(&mut &frame[..]).unwrap();
        assert_eq!(back, message);
        let huge = ((MAX_FRAME_BYTES + 1) as u32).to_be_bytes();
        assert!(matches!(body_length(huge), Err(FrameError::TooLarge(_))));
        let mut bad = 3u32.to_be_bytes().to_vec();
        bad.extend_from_slice(b"{x}");
        assert!(matches!(
            read_frame::<AgentMessage>(&mut &bad[..]),
            Err(FrameError::Malformed(_))
        ));
    }

    #[test]
    fn long_lines_are_cut_on_a_character_boundary() {
        let mut line = "é".repeat(10);
        truncate_line(&mut line, 5);
        assert_eq!(line, "éé [cut]");
    }
}
