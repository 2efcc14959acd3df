//! The build queue: a bounded pool of workers that claim `waiting` builds from the store
//! under a lease (`queue`), run them with the engine, write their log entries, and record how
//! they end; cancellation; recovery after a crash; a process's metrics.
//!
//! On one machine the store is SQLite and this process is the only worker. With PostgreSQL,
//! any number of processes share the queue: API processes only record builds, workers claim
//! them, and a lease that lapses (its worker died) puts a build back in the queue once.
//!
//! Base-image credentials, registry credentials and build secrets live only in memory, beside
//! the queue, until the build that needs them starts; they are never written anywhere.
//! Dockerfile and declarative builds run with BuildKit inside the build's engine context.

mod artifacts;
mod builtin;
mod execute;
pub mod metrics;
mod queue;

pub use builtin::{BASE, BUILTIN_OWNER};

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{watch, Semaphore};
use tokio::task::AbortHandle;

use nullspace_build::{ids, BuildError, BuildEvent, BuildOutcome, Engine, EventSink};

use nullspace_api::{BuildStatus, FailurePhase, LogKind, LogLevel, LogPhase};
use nullspace_build::definition::{BuildDefinition, RequestSecrets};

use crate::entry::{entry, CacheSummary, EventMapper, LogEntry, IMPORT_STEPS};
use crate::error::{ApiError, ErrorDetail};

use crate::config::Deployment;
use crate::store::{BuildRecord, BuildResult, BuildStore, Finish, Queueing, StoreError};

/// Runs builds; one per server.
pub struct Runner {
    store: Arc<dyn BuildStore>,
    engine: Arc<Engine>,
    permits: Arc<Semaphore>,
    running: Mutex<HashMap<String, AbortHandle>>,
    cancels: Mutex<HashMap<String, Arc<tokio::sync::Notify>>>,
    credentials: Mutex<HashMap<String, RequestSecrets>>,
    changes: watch::Sender<u64>,
    build_timeout: std::time::Duration,
    max_active_builds_per_owner: u64,
    /// The image of the builtin `base` template.
    base_image: String,
    /// Held while the builtin `base` template is looked up or queued.
    builtin_lock: Mutex<()>,
    /// Role, instance name, leases.
    deployment: Deployment,
    /// Wakes this process's worker loop (a build was queued or ended).
    wake: tokio::sync::Notify,
    /// Set on shutdown: claim nothing more.
    draining: watch::Sender<bool>,
    /// Counters for `/metrics`.
    metrics: Mutex<metrics::Metrics>,
    /// Cached answers of `/readyz` and `/metrics`.
    probes: Mutex<queue::Probes>,
    /// The worker loop, awaited by [`Runner::drain`].
    work_loop: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Where published artifacts and context blobs are shared between hosts.
    objects: Option<nullspace_build::object_storage::ObjectStorage>,
    /// One artifact fetch at a time (two callers wanting one artifact fetch it once).
    fetch_lock: tokio::sync::Mutex<()>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Runner {
    /// A runner with `workers` concurrent builds and the time budget and per-owner quota of
    /// `settings`.
    pub fn new(
        store: Arc<dyn BuildStore>,
        engine: Arc<Engine>,
        workers: usize,
        settings: &crate::config::ServerSettings,
        deployment: Deployment,
        objects: Option<nullspace_build::object_storage::ObjectStorage>,
    ) -> Arc<Runner> {
        Arc::new(Runner {
            objects,
            fetch_lock: tokio::sync::Mutex::new(()),
            build_timeout: settings.build_timeout,
            max_active_builds_per_owner: settings.max_active_builds_per_owner,
            base_image: settings.base_image.clone(),
            builtin_lock: Mutex::new(()),
            deployment,
            wake: tokio::sync::Notify::new(),
            draining: watch::Sender::new(false),
            metrics: Mutex::new(metrics::Metrics::default()),
            work_loop: Mutex::new(None),
            probes: Mutex::new(queue::Probes::default()),
            store,
            engine,
            permits: Arc::new(Semaphore::new(workers.max(1))),
            running: Mutex::new(HashMap::new()),
            cancels: Mutex::new(HashMap::new()),
            credentials: Mutex::new(HashMap::new()),
            changes: watch::Sender::new(0),
        })
    }

    /// The engine builds run on.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// Fires whenever a log entry or a status is written.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn changed(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn BuildStore> {
        &self.store
    }

    /// This process's role, name and leases.
    pub fn deployment(&self) -> &Deployment {
        &self.deployment
    }

    /// Records a new `waiting` build of `owner` and queues it. `retry_of` names the build it
    /// retries.
    pub fn submit(
        self: &Arc<Self>,
        owner: &str,
        definition: BuildDefinition,
        secrets: RequestSecrets,
        retry_of: Option<String>,
    ) -> Result<BuildRecord, ApiError> {
        if !secrets.is_empty() && !self.deployment.role.runs_builds() {
            // Secrets live only in the memory of the process that received them.
            return Err(ApiError::new(
                axum::http::StatusCode::BAD_REQUEST,
                "credentials_not_supported",
                "this API process runs no builds and request-time credentials (base_image_auth, registry_auth, build_secrets) are never stored, so no worker could use them; configure registry credentials on the workers (docker config) or send the build to a server with --role all",
            ));
        }
        let wait_for = if self.needs_builtin_base(&definition, owner) {
            self.queue_builtin_base()?
        } else {
            None
        };
        let active = self.store.active_builds(owner)?;
        if active >= self.max_active_builds_per_owner {
            return Err(ApiError::new(
                axum::http::StatusCode::TOO_MANY_REQUESTS,
                "build_quota_exceeded",
                format!(
                    "{active} of your builds are already waiting or running (the limit is {}); wait for one to end or cancel one",
                    self.max_active_builds_per_owner
                ),
            ));
        }
        let now = ids::now_rfc3339();
        let template_id =
            self.store
                .ensure_template(owner, &definition.name, &ids::new_template_id(), &now)?;
        let mut record =
            BuildRecord::waiting(ids::new_build_id(), owner, template_id, definition, &now);
        record.retry_of = retry_of;
        let queueing = Queueing {
            holder: (!secrets.is_empty()).then(|| self.deployment.instance.clone()),
            wait_for,
        };
        let mut queued = entry(
            LogKind::Message,
            LogLevel::Info,
            format!(
                "queued: build {} of {} from {}",
                record.id,
                record.name,
                record.definition.base_description()
            ),
        )
        .phase(LogPhase::Preparing);
        if let Some(previous) = &record.retry_of {
            queued.kind = LogKind::Retry;
            queued.phase = Some(LogPhase::Retry);
            queued.message = format!("{} (retry of {previous})", queued.message);
        }
        // In memory before the build can be claimed (this process's worker may claim it at
        // once), and gone again if it could not be recorded.
        if !secrets.is_empty() {
            lock(&self.credentials).insert(record.id.clone(), secrets);
        }
        if let Err(error) = self.store.insert_build(&record, &queueing, &queued) {
            lock(&self.credentials).remove(&record.id);
            return Err(error.into());
        }
        self.wake.notify_one();
        self.changed();
        Ok(record)
    }

    /// Cancels a queued or running build of `owner`; a build that already ended is returned
    /// as it is.
    pub fn cancel(&self, owner: &str, id: &str, reason: &str) -> Result<BuildRecord, ApiError> {
        let record = self
            .store
            .build(Some(owner), id)?
            .ok_or_else(|| ApiError::build_not_found(id))?;
        if record.status.is_terminal() {
            return Ok(record);
        }
        let now = ids::now_rfc3339();
        let reason = if reason.trim().is_empty() {
            "cancelled by request".to_string()
        } else {
            reason.trim().to_string()
        };
        let mut cancelled = entry(
            LogKind::Cancelled,
            LogLevel::Warn,
            format!("build cancelled: {reason}"),
        )
        .phase(LogPhase::Cleanup);
        cancelled.result = Some(BuildStatus::Cancelled);
        let mut end =
            entry(LogKind::End, LogLevel::Info, "build ended: cancelled").phase(LogPhase::Cleanup);
        end.result = Some(BuildStatus::Cancelled);
        let finish = Finish {
            status: BuildStatus::Cancelled,
            finished_at: now.clone(),
            duration_ms: duration_since(record.started_at.as_deref()),
            failure_phase: None,
            error_message: Some(format!("cancelled: {reason}")),
            result: None,
            cache_summary: None,
            worker: None,
        };
        if self.store.finish(id, &finish, &[cancelled, end])? {
            self.count_finish(&finish);
            lock(&self.credentials).remove(id);
            if let Some(cancel) = lock(&self.cancels).remove(id) {
                // Dropping the build's future removes its staging dir.
                cancel.notify_one();
            }
            if let Some(handle) = lock(&self.running).remove(id) {
                handle.abort();
            }
            if record.status == BuildStatus::Building {
                let _ = self
                    .engine
                    .store()
                    .fail_build(id, &format!("cancelled: {reason}"), &now);
            }
            self.changed();
        }
        Ok(self.store.build(Some(owner), id)?.unwrap_or(record))
    }

    /// After a restart on one machine: builds left `building` failed with the server; `waiting`
    /// builds run again, unless they needed credentials, which did not survive. With a shared
    /// store the leases decide instead: a build whose worker died is retried elsewhere.
    pub fn recover(self: &Arc<Self>) -> Result<(), StoreError> {
        if self.store.is_shared() {
            // This process runs nothing yet: what is staged here is an earlier process's.
            let staging = self.engine.data_dir().staging();
            for entry in std::fs::read_dir(&staging).into_iter().flatten().flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with("tb_") || name.starts_with("fetch-") {
                    let _ = nullspace_build::artifact::remove_tree(&entry.path());
                }
            }
            return Ok(());
        }
        let now = ids::now_rfc3339();
        for id in self.store.builds_in(BuildStatus::Building)? {
            let message = "the server stopped while this build was running (crash or restart); nothing was published; retry the build";
            let record = self.store.build(None, &id)?;
            self.fail(&id, record.as_ref(), FailurePhase::Build, message, &now)?;
            let _ = self.engine.store().fail_build(&id, message, &now);
            let staging = self.engine.data_dir().staging();
            let _ = nullspace_build::artifact::remove_tree(&staging.join(&id));
            // An artifact written just before the crash was never recorded: nothing points at it.
            let _ = nullspace_build::artifact::remove_tree(
                &self.engine.data_dir().templates().join(&id),
            );
            let _ = nullspace_build::artifact::remove_tree(
                &nullspace_build::artifact::scratch_dir(&staging, &id),
            );
        }
        for id in self.store.builds_in(BuildStatus::Waiting)? {
            let record = self.store.build(None, &id)?;
            if record
                .as_ref()
                .is_some_and(|r| r.definition.needs_request_secrets())
            {
                let message = "base-image credentials, registry credentials and build secrets are held in memory only and were lost when the server restarted; retry with fresh base_image_auth, registry_auth and build_secrets";
                self.fail(&id, record.as_ref(), FailurePhase::Prepare, message, &now)?;
            }
        }
        Ok(())
    }

    fn fail(
        &self,
        id: &str,
        record: Option<&BuildRecord>,
        phase: FailurePhase,
        message: &str,
        now: &str,
    ) -> Result<bool, StoreError> {
        self.fail_held(id, record, phase, message, now, None)
    }

    /// [`Runner::fail`], recorded only while `worker` (when given) holds the build.
    fn fail_held(
        &self,
        id: &str,
        record: Option<&BuildRecord>,
        phase: FailurePhase,
        message: &str,
        now: &str,
        worker: Option<&str>,
    ) -> Result<bool, StoreError> {
        let finish = Finish {
            duration_ms: record.and_then(|r| duration_since(r.started_at.as_deref())),
            worker: worker.map(str::to_string),
            ..failure_finish(phase, message, now)
        };
        let (error, end) = failure_entries(message, phase);
        let done = self.store.finish(id, &finish, &[error, end])?;
        if done {
            self.count_finish(&finish);
        }
        self.changed();
        Ok(done)
    }

    /// How `record` ends when it fails in `phase` with `message` at `now`.
    fn failure(
        &self,
        record: &BuildRecord,
        phase: FailurePhase,
        message: &str,
        now: &str,
    ) -> Finish {
        Finish {
            duration_ms: duration_since(record.started_at.as_deref()),
            ..failure_finish(phase, message, now)
        }
    }

    /// Runs `f`, which uses the store (SQLite calls block), on the blocking pool.
    async fn off_runtime<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Runner) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let runner = self.clone();
        tokio::task::spawn_blocking(move || f(&runner))
            .await
            .unwrap_or_else(|error| Err(StoreError::Task(error.to_string())))
    }

    /// The request-time secrets a claimed build needs, or `None` when they are gone (then the
    /// build has failed).
    fn credentials_for(&self, record: &BuildRecord) -> Result<Option<RequestSecrets>, StoreError> {
        let held = lock(&self.credentials).remove(&record.id);
        match held {
            Some(secrets) => Ok(Some(secrets)),
            None if !record.definition.needs_request_secrets() => {
                Ok(Some(RequestSecrets::default()))
            }
            None => {
                self.fail(
                    &record.id,
                    Some(record),
                    FailurePhase::Prepare,
                    "base-image credentials, registry credentials or build secrets are no longer available; retry with fresh ones",
                    &ids::now_rfc3339(),
                )?;
                Ok(None)
            }
        }
    }

    /// Runs a build this worker claimed, renewing its lease; stops it when the lease is lost
    /// or the build is cancelled (then another party records how it ended).
    async fn run(self: &Arc<Self>, record: BuildRecord) -> Result<(), StoreError> {
        let build_id = record.id.clone();
        let id = build_id.as_str();
        let credentials = {
            let runner_record = record.clone();
            self.off_runtime(move |runner| runner.credentials_for(&runner_record))
                .await?
        };
        let Some(credentials) = credentials else {
            return Ok(());
        };
        let summary = Arc::new(Mutex::new(CacheSummary::default()));
        let sink: Arc<dyn EventSink> = {
            let runner = self.clone();
            let id = id.to_string();
            let template_id = record.template_id.clone();
            let summary = summary.clone();
            let mapper = EventMapper::default();
            Arc::new(move |event: BuildEvent| {
                if let BuildEvent::Cache { kind, status, .. } = &event {
                    lock(&summary).count(*kind, *status);
                }
                if let Some(mut entry) = mapper.map(&event) {
                    entry.message = runner.redact_host_paths(&entry.message);
                    entry.build_id = id.clone();
                    entry.template_id = template_id.clone();
                    if let Err(error) = runner.store.append_entry(&id, &entry) {
                        tracing::warn!("build {id}: log entry lost: {error}");
                    }
                    runner.changed();
                }
            })
        };
        // The engine's future is not `Send` (rustc cannot prove it for its download stream),
        // so it runs on a blocking thread of this runtime; cancelling drops it there, which
        // removes the build's staging dir.
        let cancel = lock(&self.cancels)
            .entry(id.to_string())
            .or_insert_with(|| Arc::new(tokio::sync::Notify::new()))
            .clone();
        let renewing = self.keep_lease(id, cancel.clone());
        let outcome = {
            let runner = self.clone();
            let record = record.clone();
            let handle = tokio::runtime::Handle::current();
            tokio::task::spawn_blocking(move || {
                handle.block_on(async {
                    tokio::select! {
                        outcome = runner.execute(&record, &credentials, sink) => Some(outcome),
                        _ = cancel.notified() => None,
                        // Dropping the build stops its BuildKit client and its rootfs writer.
                        _ = tokio::time::sleep(runner.build_timeout) => Some(Err(BuildError::TimedOut {
                            seconds: runner.build_timeout.as_secs(),
                        })),
                    }
                })
            })
            .await
        };
        renewing.abort();
        let outcome = match outcome {
            Ok(Some(outcome)) => outcome,
            Ok(None) => return Ok(()),
            Err(error) => Err(BuildError::Internal(format!("build task stopped: {error}"))),
        };
        let cache_summary = lock(&summary).clone();
        let id = id.to_string();
        self.off_runtime(move |runner| runner.record_outcome(&id, record, outcome, cache_summary))
            .await
    }

    /// Records how the build ended: published (with its result) or failed.
    fn record_outcome(
        &self,
        id: &str,
        record: BuildRecord,
        outcome: Result<BuildOutcome, BuildError>,
        cache_summary: CacheSummary,
    ) -> Result<(), StoreError> {
        let now = ids::now_rfc3339();
        match outcome {
            Ok(outcome) => {
                let document = &outcome.template;
                let canonical_ref = format!(
                    "{}/{}:{}",
                    record.owner,
                    record.name,
                    record.tags.first().map(String::as_str).unwrap_or("default")
                );
                let artifact_manifest = match self.share_artifact(&record, &outcome.artifact_dir) {
                    Ok(manifest) => manifest,
                    Err(message) => {
                        let _ = nullspace_build::artifact::remove_tree(&outcome.artifact_dir);
                        return self.record_failure(
                            &record,
                            FailurePhase::Finalize,
                            &message,
                            &now,
                            Some(cache_summary),
                        );
                    }
                };
                let result = BuildResult {
                    runtime_defaults: document.runtime_defaults.clone(),
                    oci_metadata: document.oci_metadata.clone(),
                    source_digest: Some(document.source.manifest_digest.clone()),
                    artifact_dir: outcome.artifact_dir.to_string_lossy().into_owned(),
                    artifact_manifest,
                    rootfs_size_bytes: document.rootfs.size_bytes,
                };
                let published = entry(
                    LogKind::Message,
                    LogLevel::Info,
                    format!(
                        "published {canonical_ref} (tags {})",
                        record.tags.join(", ")
                    ),
                )
                .phase(LogPhase::Finalize)
                .step(IMPORT_STEPS, IMPORT_STEPS);
                let mut end = entry(LogKind::End, LogLevel::Info, "build ended: ready")
                    .phase(LogPhase::Finalize);
                end.result = Some(BuildStatus::Ready);
                end.result_metadata = Some(serde_json::json!({
                    "canonical_ref": canonical_ref,
                    "duration_ms": duration_since(record.started_at.as_deref()),
                }));
                let finish = Finish {
                    status: BuildStatus::Ready,
                    finished_at: now.clone(),
                    duration_ms: duration_since(record.started_at.as_deref()),
                    failure_phase: None,
                    error_message: None,
                    result: Some(result),
                    cache_summary: Some(cache_summary),
                    worker: Some(self.deployment.instance.clone()),
                };
                let recorded = self.finish_persistently(
                    id,
                    &finish,
                    &[with_ids(published, &record), with_ids(end, &record)],
                );
                if matches!(recorded, Ok(true)) {
                    self.count_finish(&finish);
                    self.after_publish(&record, &outcome.artifact_dir, &now);
                } else {
                    // Cancelled meanwhile, or the store cannot record it: nothing may point at
                    // the artifact, so it goes.
                    let _ = nullspace_build::artifact::remove_tree(&outcome.artifact_dir);
                }
                if let Err(error) = recorded {
                    let message = format!("the finished build could not be recorded: {error}");
                    self.fail(id, Some(&record), FailurePhase::Finalize, &message, &now)?;
                }
                self.changed();
            }
            Err(error) => {
                let phase = error.phase();
                let message = self.redact_host_paths(&error.to_string());
                self.record_failure(&record, phase, &message, &now, Some(cache_summary))?;
            }
        }
        Ok(())
    }
}

impl Runner {
    /// Records that this worker's build failed (only while it holds the build).
    fn record_failure(
        &self,
        record: &BuildRecord,
        phase: FailurePhase,
        message: &str,
        now: &str,
        cache_summary: Option<CacheSummary>,
    ) -> Result<(), StoreError> {
        let finish = Finish {
            cache_summary,
            worker: Some(self.deployment.instance.clone()),
            ..self.failure(record, phase, message, now)
        };
        let (failed, end) = failure_entries(message, phase);
        if self.finish_persistently(
            &record.id,
            &finish,
            &[with_ids(failed, record), with_ids(end, record)],
        )? {
            self.count_finish(&finish);
        }
        self.changed();
        Ok(())
    }

    /// `text` without the server's own paths: tenants read build messages, and the data dir
    /// (staging, blobs, every owner's artifacts) is the operator's business.
    fn redact_host_paths(&self, text: &str) -> String {
        redact_path(self.engine.data_dir().root(), text)
    }

    /// Ends a build, retrying a store that fails (a full disk may free up) for about half a
    /// minute so a build is not left `building` until the next restart. Runs off the runtime.
    fn finish_persistently(
        &self,
        id: &str,
        finish: &Finish,
        entries: &[LogEntry],
    ) -> Result<bool, StoreError> {
        let mut delay = std::time::Duration::from_millis(500);
        let mut attempts = 0;
        loop {
            match self.store.finish(id, finish, entries) {
                Ok(changed) => return Ok(changed),
                Err(error) if attempts >= 5 => return Err(error),
                Err(error) => {
                    tracing::warn!("build {id}: could not record its end ({error}); retrying");
                    std::thread::sleep(delay);
                    delay *= 2;
                    attempts += 1;
                }
            }
        }
    }
}

/// `text` with every occurrence of `root` (and paths below it) shown as `<data-dir>`.
fn redact_path(root: &std::path::Path, text: &str) -> String {
    let root = root.to_string_lossy();
    if root.len() < 2 {
        return text.to_owned();
    }
    text.replace(&*root, "<data-dir>")
}

fn with_ids(mut entry: LogEntry, record: &BuildRecord) -> LogEntry {
    entry.build_id = record.id.clone();
    entry.template_id = record.template_id.clone();
    entry
}

/// An `error` end in `phase` with `message` (no result, no duration).
fn failure_finish(phase: FailurePhase, message: &str, now: &str) -> Finish {
    Finish {
        status: BuildStatus::Error,
        finished_at: now.into(),
        duration_ms: None,
        failure_phase: Some(phase),
        error_message: Some(message.into()),
        result: None,
        cache_summary: None,
        worker: None,
    }
}

/// The final `error` and `end` entries of a failed build.
fn failure_entries(message: &str, phase: FailurePhase) -> (LogEntry, LogEntry) {
    let mut error = entry(LogKind::Error, LogLevel::Error, message).phase(LogPhase::Finalize);
    error.error_detail = Some(ErrorDetail {
        phase,
        message: message.into(),
    });
    let mut end =
        entry(LogKind::End, LogLevel::Error, "build ended: error").phase(LogPhase::Finalize);
    end.result = Some(BuildStatus::Error);
    (error, end)
}

/// Milliseconds since an RFC 3339 time.
fn duration_since(started: Option<&str>) -> Option<u64> {
    let started = humantime::parse_rfc3339(started?).ok()?;
    let elapsed = std::time::SystemTime::now().duration_since(started).ok()?;
    u64::try_from(elapsed.as_millis()).ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn messages_never_show_the_data_dir() {
        let root = std::path::Path::new("/srv/nullspace-data");
        assert_eq!(
            super::redact_path(
                root,
                "/srv/nullspace-data/staging/tb_1/rootfs.ext4: No space left on device"
            ),
            "<data-dir>/staging/tb_1/rootfs.ext4: No space left on device"
        );
        assert_eq!(super::redact_path(root, "layer x: bad"), "layer x: bad");
    }
}
