//! Sandbox wire types: create, the sandbox object, commands and their streamed events, files.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `POST /v1/sandboxes`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSandboxRequest {
    /// Template ref (name, `name:tag`, build id `tb_...`, canonical ref); `base` when absent:
    /// the caller's own `base`, else the builtin one.
    #[serde(default)]
    pub template: Option<String>,
    /// Env for every command of this sandbox, over the template's (not for its start
    /// command, which already runs).
    #[serde(default)]
    pub envs: BTreeMap<String, String>,
    /// Seconds until it is killed (default 300).
    #[serde(default)]
    pub timeout: Option<u64>,
}

/// A sandbox.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SandboxInfo {
    /// `sb_...`.
    pub sandbox_id: String,
    /// The template ref it was created from.
    pub template: String,
    /// The template build it runs.
    pub build_id: String,
    /// `running` or `ended`.
    pub state: String,
    /// `snapshot` (restored, start command already running) or `cold_boot` (the template has
    /// no snapshot).
    pub started_from: String,
    /// Milliseconds from the create request to the guest agent's answer.
    pub start_ms: u64,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339: when it is killed unless extended (running sandboxes).
    pub end_at: Option<String>,
    /// RFC 3339: when it ended.
    pub ended_at: Option<String>,
    /// `killed`, `timed_out`, `vm_exited`, `server_stopped`, `server_restarted`.
    pub end_reason: Option<String>,
    /// What happened at the end.
    pub end_detail: Option<String>,
    /// vCPUs.
    pub cpu_count: u32,
    /// Guest memory in MiB.
    pub memory_mb: u32,
    /// Names of the create-time env (values are never returned).
    pub env_keys: Vec<String>,
}

/// `GET /v1/sandboxes`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SandboxList {
    /// Newest first.
    pub sandboxes: Vec<SandboxInfo>,
}

/// `POST /v1/sandboxes/{id}/timeout`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetTimeoutRequest {
    /// Seconds from now.
    pub timeout: u64,
}

/// `POST /v1/sandboxes/{id}/commands`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CommandRequest {
    /// Run with `/bin/sh -c`.
    #[serde(default)]
    pub cmd: Option<String>,
    /// Or run this program with these arguments.
    #[serde(default)]
    pub argv: Option<Vec<String>>,
    /// Env for this command, over the sandbox's.
    #[serde(default)]
    pub envs: BTreeMap<String, String>,
    /// User (default: the template's).
    #[serde(default)]
    pub user: Option<String>,
    /// Working directory (default: the template's workdir).
    #[serde(default)]
    pub cwd: Option<String>,
    /// Seconds before it is killed (default 60; 0: no limit).
    #[serde(default)]
    pub timeout: Option<u64>,
    /// Return at once with the command's id instead of waiting for its end.
    #[serde(default)]
    pub background: bool,
}

/// A command in a sandbox.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CommandInfo {
    /// Its id in the sandbox.
    pub command_id: u64,
    /// What runs.
    pub cmd: String,
    /// Its process id in the guest, once started.
    pub pid: Option<u32>,
    /// `running`, `exited`, `killed`, `timed_out` or `failed`.
    pub status: String,
    /// Exit status, when it exited.
    pub exit_code: Option<i32>,
    /// Signal number, when a signal ended it.
    pub signal: Option<i32>,
    /// Why it could not run or was lost.
    pub error: Option<String>,
    /// Output so far (lossy UTF-8; the first 1 MiB of each stream is kept).
    pub stdout: String,
    /// Output so far.
    pub stderr: String,
    /// Bytes of output not kept.
    pub output_left_off: u64,
}

/// One event of a command's stream (`text/event-stream`; the SSE event name is `kind`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CommandStreamEvent {
    /// Started.
    Start {
        /// Its id.
        command_id: u64,
    },
    /// Output bytes (lossy UTF-8).
    Stdout {
        /// The text.
        data: String,
    },
    /// Output bytes.
    Stderr {
        /// The text.
        data: String,
    },
    /// The end, with the whole command.
    End {
        /// The command.
        command: CommandInfo,
    },
}

/// One directory entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FileEntry {
    /// Its name.
    pub name: String,
    /// Its path.
    pub path: String,
    /// `file`, `dir`, `symlink`, `other`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Bytes.
    pub size: u64,
    /// Permission bits (octal text, e.g. `0644`).
    pub mode: String,
    /// Owner uid.
    pub uid: u32,
    /// Owner gid.
    pub gid: u32,
}

/// `GET /v1/sandboxes/{id}/files/list`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FileListing {
    /// Sorted by name.
    pub entries: Vec<FileEntry>,
    /// Entries were left off (over 2000).
    pub truncated: bool,
}

/// `PUT /v1/sandboxes/{id}/files`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FileWritten {
    /// The path written.
    pub path: String,
    /// Its size now.
    pub size: u64,
}
