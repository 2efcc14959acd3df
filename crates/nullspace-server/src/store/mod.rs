//! Durable state of the API: build records (the queue), their log entries, and the templates and
//! tags they publish into.
//!
//! [`BuildStore`] is what the server needs; [`SqliteStore`] implements it on the data dir's
//! `nullspace.db`, whose one schema is `nullspace_build::store::schema` (versioned
//! migrations). This store writes `api_builds` (the queue) and `api_log_entries`; templates,
//! tags and aliases are the engine's rows (`namespace` = the owner's namespace), reached only
//! through `nullspace_build::store::rows`. A PostgreSQL implementation would keep the same
//! tables. Its calls block: async code reaches it through [`crate::api::AppState::blocking`]
//! or `spawn_blocking`, never on a runtime worker thread.
//!
//! Every terminal transition writes the new status and its final log entries in one
//! transaction, so a log follower that sees a terminal status can read the complete log.

mod sqlite;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use sqlite::SqliteStore;

use nullspace_rootfs::runtime::{OciMetadata, RuntimeDefaults};

use crate::entry::{CacheSummary, LogEntry};
use nullspace_api::{BuildBackend, BuildStatus, FailurePhase};
use nullspace_build::definition::BuildDefinition;

/// A store failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed.
    #[error("database {path}: {source}")]
    Database {
        /// The database file.
        path: PathBuf,
        /// The SQLite error.
        source: rusqlite::Error,
    },
    /// A stored JSON document is unreadable.
    #[error("database {path}: stored {what} is unreadable: {source}")]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// Which document.
        what: &'static str,
        /// The parse error.
        source: serde_json::Error,
    },
    /// The schema could not be brought up to date.
    #[error("database {path}: {message}")]
    Migration {
        /// The database file.
        path: PathBuf,
        /// Which step failed and why.
        message: String,
    },
    /// The lock is poisoned (a thread panicked while holding it).
    #[error("database lock poisoned")]
    Poisoned,
    /// A blocking store task stopped (panicked or was cancelled).
    #[error("store task stopped: {0}")]
    Task(String),
    /// A name or alias is already taken.
    #[error("{0}")]
    NameTaken(String),
}

/// What a ready build produced.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BuildResult {
    /// Runtime defaults (env values stay server-side; the API shows keys only).
    pub runtime_defaults: RuntimeDefaults,
    /// OCI metadata hints.
    pub oci_metadata: OciMetadata,
    /// Manifest digest of the source image.
    pub source_digest: Option<String>,
    /// The artifact dir.
    pub artifact_dir: String,
    /// Rootfs size in bytes.
    pub rootfs_size_bytes: u64,
}

/// One build as the API knows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BuildRecord {
    /// `tb_...`.
    pub id: String,
    /// The API key owner that created it.
    pub owner: String,
    /// `tmpl_...`.
    pub template_id: String,
    /// Template name.
    pub name: String,
    /// Tags requested (and promoted to it).
    pub tags: Vec<String>,
    /// Where the build is.
    pub status: BuildStatus,
    /// The sanitized definition (no secrets).
    pub definition: BuildDefinition,
    /// RFC 3339 times.
    pub created_at: String,
    /// Last change.
    pub updated_at: String,
    /// When it entered the queue.
    pub queued_at: String,
    /// When it started running.
    pub started_at: Option<String>,
    /// When it ended.
    pub finished_at: Option<String>,
    /// Running time.
    pub duration_ms: Option<u64>,
    /// Failure phase.
    pub failure_phase: Option<FailurePhase>,
    /// Failure message.
    pub error_message: Option<String>,
    /// What a ready build produced.
    pub result: Option<BuildResult>,
    /// Cache decisions.
    pub cache_summary: CacheSummary,
    /// The build this one retries.
    pub retry_of: Option<String>,
}

/// How a build ended.
#[derive(Clone, Debug)]
pub struct Finish {
    /// `ready`, `error` or `cancelled`.
    pub status: BuildStatus,
    /// When.
    pub finished_at: String,
    /// Running time.
    pub duration_ms: Option<u64>,
    /// Failure phase.
    pub failure_phase: Option<FailurePhase>,
    /// Failure message.
    pub error_message: Option<String>,
    /// Result of a ready build.
    pub result: Option<BuildResult>,
    /// Cache decisions.
    pub cache_summary: Option<CacheSummary>,
}

/// A template and its tags.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TemplateRow {
    /// `tmpl_...`.
    pub id: String,
    /// Namespace (the owner's).
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Tags and the builds they point at.
    pub tags: Vec<(String, String)>,
    /// Other names it answers to.
    pub aliases: Vec<String>,
}

/// Filters of a build history listing.
#[derive(Clone, Debug, Default)]
pub struct HistoryFilter {
    /// Only this status.
    pub status: Option<BuildStatus>,
    /// Only this backend.
    pub backend: Option<BuildBackend>,
    /// At most this many rows.
    pub limit: usize,
    /// Rows older than this sequence number (the cursor).
    pub before: Option<i64>,
}

/// What the API needs from durable storage.
pub trait BuildStore: Send + Sync + 'static {
    /// The id of `owner`'s template `name`, creating it (with `new_id`) if needed.
    fn ensure_template(
        &self,
        owner: &str,
        name: &str,
        new_id: &str,
        now: &str,
    ) -> Result<String, StoreError>;
    /// Records a new `waiting` build.
    fn insert_build(&self, record: &BuildRecord) -> Result<(), StoreError>;
    /// A build of `owner` (any owner when `None`).
    fn build(&self, owner: Option<&str>, id: &str) -> Result<Option<BuildRecord>, StoreError>;
    /// `waiting` → `building`; false when the build is no longer waiting.
    fn mark_building(&self, id: &str, now: &str, entry: &LogEntry) -> Result<bool, StoreError>;
    /// Ends a `waiting`/`building` build with its final entries in one transaction; false
    /// (and nothing written) when it had already ended.
    fn finish(&self, id: &str, finish: &Finish, entries: &[LogEntry]) -> Result<bool, StoreError>;
    /// Appends an entry to a build that has not ended; returns its offset, `None` if ended.
    fn append_entry(&self, id: &str, entry: &LogEntry) -> Result<Option<u64>, StoreError>;
    /// Entries from `offset` on, at most `limit`.
    fn entries(&self, id: &str, offset: u64, limit: usize) -> Result<Vec<LogEntry>, StoreError>;
    /// The number of entries (the next offset).
    fn entry_count(&self, id: &str) -> Result<u64, StoreError>;
    /// `owner`'s builds of a template, newest first, with each row's sequence number.
    fn history(
        &self,
        owner: &str,
        template_id: &str,
        filter: &HistoryFilter,
    ) -> Result<Vec<(i64, BuildRecord)>, StoreError>;
    /// `owner`'s template by id or name.
    fn template(&self, owner: &str, id_or_name: &str) -> Result<Option<TemplateRow>, StoreError>;
    /// `owner`'s templates.
    fn templates(&self, owner: &str) -> Result<Vec<TemplateRow>, StoreError>;
    /// Points `tag` of a template at a build, and records the tag on the build.
    fn set_tag(&self, template_id: &str, tag: &str, build_id: &str) -> Result<(), StoreError>;
    /// How many of `owner`'s builds are waiting or running.
    fn active_builds(&self, owner: &str) -> Result<u64, StoreError>;
    /// Ids of builds in `status`, oldest first.
    fn builds_in(&self, status: BuildStatus) -> Result<Vec<String>, StoreError>;
    /// Removes `tag` of a template (and from its build's record); false when it had none.
    fn remove_tag(&self, template_id: &str, tag: &str) -> Result<bool, StoreError>;
    /// Renames a template; its id, builds, tags and aliases stay.
    fn rename_template(
        &self,
        owner: &str,
        template_id: &str,
        new_name: &str,
    ) -> Result<(), StoreError>;
    /// Adds an alias to a template.
    fn add_alias(&self, owner: &str, template_id: &str, alias: &str) -> Result<(), StoreError>;
    /// Records a sandbox (inserted, or replaced with its newer state; an ended one stays as it
    /// ended).
    fn put_sandbox(
        &self,
        record: &nullspace_api::sandbox::SandboxInfo,
        owner: &str,
    ) -> Result<(), StoreError>;
    /// One of `owner`'s sandboxes.
    fn sandbox(
        &self,
        owner: &str,
        id: &str,
    ) -> Result<Option<nullspace_api::sandbox::SandboxInfo>, StoreError>;
    /// `owner`'s newest `limit` sandboxes, newest first.
    fn sandboxes(
        &self,
        owner: &str,
        limit: usize,
    ) -> Result<Vec<nullspace_api::sandbox::SandboxInfo>, StoreError>;
    /// Ends every sandbox still recorded as running (after a restart: their VMs died with the
    /// process that ran them); returns how many.
    fn end_running_sandboxes(
        &self,
        at: &str,
        reason: &str,
        detail: &str,
    ) -> Result<usize, StoreError>;
    /// Removes an alias of a template; false when it had none such.
    fn remove_alias(&self, owner: &str, template_id: &str, alias: &str)
        -> Result<bool, StoreError>;
}
