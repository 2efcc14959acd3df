//! Durable state of the API: build records (the queue), their log entries, and the templates and
//! tags they publish into.
//!
//! [`BuildStore`] is what the server needs; [`SqliteStore`] implements it on the data dir's
//! `nullspace.db`, whose one schema is `nullspace_build::store::schema` (versioned
//! migrations). This store writes `api_builds` (the queue) and `api_log_entries`; templates,
//! tags and aliases are the engine's rows (`namespace` = the owner's namespace), reached only
//! through `nullspace_build::store::rows`. [`PgStore`] keeps the same tables in PostgreSQL for
//! many hosts (its own migrations, `postgres_schema`). Calls block: async code reaches the
//! store through [`crate::api::AppState::blocking`] or `spawn_blocking`, never on a runtime
//! worker thread (the SQLite calls block on the disk; the PostgreSQL store runs its async driver
//! on a small runtime of its own and waits for it).
//!
//! The queue: a `waiting` build is claimed by one worker under a lease
//! ([`BuildStore::claim_next`]) that the worker renews while it works
//! ([`BuildStore::renew_lease`]); a lease that lapses (the worker died or lost the database)
//! puts the build back in the queue once ([`BuildStore::requeue_expired`]), then ends it.
//!
//! Every terminal transition writes the new status and its final log entries in one
//! transaction, so a log follower that sees a terminal status can read the complete log.

mod postgres;
mod postgres_schema;
mod sqlite;

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use postgres::PgStore;
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
    /// PostgreSQL failed (the message names the server and what was asked of it).
    #[error("PostgreSQL {what}: {message}")]
    Postgres {
        /// What was being done.
        what: &'static str,
        /// The driver's error.
        message: String,
    },
}

/// Unreadable `waiting` records one claim passes over before it gives up (they stay for a
/// process that can read them; past this many at the head of the queue, this process claims
/// nothing until they are gone).
const UNREADABLE_RECORDS_PASSED: usize = 64;

/// Logs that claiming passed over the record of build `id`: a warning the first time (claims
/// come every half second), then at debug level.
fn pass_over_unreadable(id: &str, error: &StoreError) {
    static WARNED: std::sync::Mutex<std::collections::BTreeSet<String>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let mut warned = WARNED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if warned.len() < 4096 && warned.insert(id.to_string()) {
        tracing::warn!("build {id}: {error}; left waiting for a process that can read it");
    } else {
        tracing::debug!("build {id}: still unreadable; passed over");
    }
}

/// How a build is queued beside its record.
#[derive(Clone, Debug, Default)]
pub struct Queueing {
    /// The process that holds the build's request-time secrets in memory: only it may claim
    /// the build (secrets never go into the store).
    pub holder: Option<String>,
    /// A build that must end first (the builtin `base` a `from_template("base")` needs).
    pub wait_for: Option<String>,
}

/// A `building` build whose worker let its lease lapse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpiredLease {
    /// The build.
    pub id: String,
    /// The worker that held it.
    pub worker: String,
    /// Attempts so far (1 on the first run).
    pub attempts: u32,
}

/// What [`BuildStore::requeue`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Requeue {
    /// Back in the queue.
    Requeued,
    /// Still the worker's lapsed (or handed-back) build, but it may not run again: its
    /// attempts are used up, or its request-time credentials died with the worker.
    Exhausted,
    /// Not the worker's lapsed build any more (ended, renewed, or taken over by someone else).
    Unchanged,
}

/// Builds by status, for metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueueDepth {
    /// `waiting`.
    pub waiting: u64,
    /// `building`.
    pub building: u64,
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
    /// The artifact dir (on the host that built it; other hosts fetch it by
    /// `artifact_manifest` into the same place under their own data dir).
    pub artifact_dir: String,
    /// The digest of the artifact's manifest in object storage, when the server has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_manifest: Option<String>,
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
    /// When set, the end is recorded only while this worker holds the build's lease (a worker
    /// whose lease lapsed and was taken over never publishes). An end already recorded by this
    /// worker with the same status counts as recorded (a retry after a lost acknowledgement).
    pub worker: Option<String>,
}

impl Finish {
    /// `record` as this end leaves it.
    fn apply(&self, record: &mut BuildRecord) {
        record.status = self.status;
        record.finished_at = Some(self.finished_at.clone());
        record.updated_at = self.finished_at.clone();
        record.duration_ms = self.duration_ms;
        record.failure_phase = self.failure_phase;
        record.error_message = self.error_message.clone();
        record.result = self.result.clone();
        if let Some(summary) = &self.cache_summary {
            record.cache_summary = summary.clone();
        }
    }
}

impl BuildRecord {
    /// A new `waiting` build `id` of `owner`'s template `template_id`, queued at `now`.
    pub fn waiting(
        id: String,
        owner: &str,
        template_id: String,
        definition: BuildDefinition,
        now: &str,
    ) -> BuildRecord {
        BuildRecord {
            id,
            owner: owner.to_string(),
            template_id,
            name: definition.name.clone(),
            tags: definition.tags.clone(),
            status: BuildStatus::Waiting,
            definition,
            created_at: now.into(),
            updated_at: now.into(),
            queued_at: now.into(),
            started_at: None,
            finished_at: None,
            duration_ms: None,
            failure_phase: None,
            error_message: None,
            result: None,
            cache_summary: CacheSummary::default(),
            retry_of: None,
        }
    }

    /// Claimed by a worker at `now`.
    fn claimed(&mut self, now: &str) {
        self.status = BuildStatus::Building;
        self.started_at = Some(now.into());
        self.updated_at = now.into();
    }

    /// Back in the queue.
    fn requeued(&mut self) {
        self.status = BuildStatus::Waiting;
        self.started_at = None;
        self.updated_at = nullspace_build::ids::now_rfc3339();
    }
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
    /// Records a new `waiting` build with its first log entry, in one transaction (no worker
    /// can write an entry before it).
    fn insert_build(
        &self,
        record: &BuildRecord,
        queueing: &Queueing,
        first: &LogEntry,
    ) -> Result<(), StoreError>;
    /// A build of `owner` (any owner when `None`).
    fn build(&self, owner: Option<&str>, id: &str) -> Result<Option<BuildRecord>, StoreError>;
    /// Claims the oldest `waiting` build this worker may run (`waiting` → `building`, the
    /// worker's lease of `lease` from the database's clock, attempts + 1, `entry` appended),
    /// all in one transaction; `None` when there is none. Two workers never claim one build.
    fn claim_next(
        &self,
        worker: &str,
        lease: Duration,
        now: &str,
        entry: &LogEntry,
    ) -> Result<Option<BuildRecord>, StoreError>;
    /// Extends `worker`'s lease on a `building` build; false when the build ended (cancelled)
    /// or is no longer this worker's (then the worker stops it).
    fn renew_lease(&self, id: &str, worker: &str, lease: Duration) -> Result<bool, StoreError>;
    /// `building` builds whose lease lapsed more than `grace` ago.
    fn expired_leases(&self, grace: Duration) -> Result<Vec<ExpiredLease>, StoreError>;
    /// Puts a `building` build held by `worker` back to `waiting` with `entry`, if its lease
    /// lapsed more than `grace` ago (or at once when `grace` is `None`: a worker handing its
    /// own build back), it has had fewer than `max_attempts` attempts (a hand-back does not
    /// count as one) and no process holds request-time credentials for it (they were used up
    /// by the attempt). [`Requeue::Exhausted`] when the build is still the worker's lapsed one
    /// but may not run again (then the caller ends it).
    fn requeue(
        &self,
        id: &str,
        worker: &str,
        grace: Option<Duration>,
        max_attempts: u32,
        entry: &LogEntry,
    ) -> Result<Requeue, StoreError>;
    /// Records that process `instance` is alive (now, by the database's clock).
    fn heartbeat(&self, instance: &str) -> Result<(), StoreError>;
    /// `waiting` builds whose request-time credentials are held by a process whose last
    /// heartbeat is older than `silent_for`: nobody else may claim them, and their credentials
    /// died with it. A holder that never wrote a heartbeat (an older version) is not judged.
    fn orphaned_held_builds(&self, silent_for: Duration) -> Result<Vec<String>, StoreError>;
    /// How many builds wait and run.
    fn queue_depth(&self) -> Result<QueueDepth, StoreError>;
    /// Whether other processes share this store (then the queue and logs change under us and
    /// are polled).
    fn is_shared(&self) -> bool;
    /// Checks that the store answers (readiness).
    fn ping(&self) -> Result<(), StoreError>;
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
        host: &str,
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
    /// The sandboxes of `host` still recorded as running, with their owners.
    fn running_sandboxes(
        &self,
        host: &str,
    ) -> Result<Vec<(String, nullspace_api::sandbox::SandboxInfo)>, StoreError>;
    /// Ends every sandbox of `host` still recorded as running (after a restart: their VMs died
    /// with the process that ran them); returns how many.
    fn end_running_sandboxes(
        &self,
        host: &str,
        at: &str,
        reason: &str,
        detail: &str,
    ) -> Result<usize, StoreError> {
        let running = self.running_sandboxes(host)?;
        for (owner, record) in &running {
            let ended = ended_sandbox(record.clone(), at, reason, detail);
            self.put_sandbox(&ended, owner, host)?;
        }
        Ok(running.len())
    }
    /// Removes an alias of a template; false when it had none such.
    fn remove_alias(&self, owner: &str, template_id: &str, alias: &str)
        -> Result<bool, StoreError>;
}

/// `entry` as stored: with its build, template and offset filled in.
fn entry_json(entry: &LogEntry, id: &str, template_id: &str, offset: u64) -> String {
    let mut entry = entry.clone();
    entry.build_id = id.to_string();
    entry.template_id = template_id.to_string();
    entry.offset = offset;
    serde_json::to_string(&entry).unwrap_or_else(|_| "{}".into())
}

/// The template of `templates` that `id_or_name` names: by id or name first, then by alias.
fn pick_template(templates: Vec<TemplateRow>, id_or_name: &str) -> Option<TemplateRow> {
    templates
        .into_iter()
        .min_by_key(|t| {
            // A name wins over an alias.
            if t.id == id_or_name || t.name == id_or_name {
                0
            } else if t.aliases.iter().any(|a| a == id_or_name) {
                1
            } else {
                2
            }
        })
        .filter(|t| {
            t.id == id_or_name || t.name == id_or_name || t.aliases.iter().any(|a| a == id_or_name)
        })
}

/// A running sandbox's record as ended at `at` for `reason`.
fn ended_sandbox(
    mut record: nullspace_api::sandbox::SandboxInfo,
    at: &str,
    reason: &str,
    detail: &str,
) -> nullspace_api::sandbox::SandboxInfo {
    record.state = "ended".into();
    record.end_at = None;
    record.ended_at = Some(at.to_string());
    record.end_reason = Some(reason.to_string());
    record.end_detail = Some(detail.to_string());
    record
}
