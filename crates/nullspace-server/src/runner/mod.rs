//! The build queue: a bounded pool of workers that run `waiting` builds with the engine, write
//! their log entries, and record how they end; cancellation; recovery after a crash.
//!
//! Base-image credentials, registry credentials and build secrets live only in memory, beside
//! the queue, until the build that needs them starts; they are never written anywhere.
//! Dockerfile and declarative builds run with BuildKit inside the build's engine context.

mod builtin;
mod execute;

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

use crate::store::{BuildRecord, BuildResult, BuildStore, Finish, StoreError};

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
    /// Held while the builtin `base` template is looked up or built.
    builtin_lock: tokio::sync::Mutex<()>,
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
    ) -> Arc<Runner> {
        Arc::new(Runner {
            build_timeout: settings.build_timeout,
            max_active_builds_per_owner: settings.max_active_builds_per_owner,
            base_image: settings.base_image.clone(),
            builtin_lock: tokio::sync::Mutex::new(()),
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

    /// Records a new `waiting` build of `owner` and queues it. `retry_of` names the build it
    /// retries.
    pub fn submit(
        self: &Arc<Self>,
        owner: &str,
        definition: BuildDefinition,
        secrets: RequestSecrets,
        retry_of: Option<String>,
    ) -> Result<BuildRecord, ApiError> {
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
        let record = BuildRecord {
            id: ids::new_build_id(),
            owner: owner.to_string(),
            template_id,
            name: definition.name.clone(),
            tags: definition.tags.clone(),
            status: BuildStatus::Waiting,
            definition,
            created_at: now.clone(),
            updated_at: now.clone(),
            queued_at: now,
            started_at: None,
            finished_at: None,
            duration_ms: None,
            failure_phase: None,
            error_message: None,
            result: None,
            cache_summary: CacheSummary::default(),
            retry_of,
        };
        self.store.insert_build(&record)?;
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
        self.store.append_entry(&record.id, &queued)?;
        if !secrets.is_empty() {
            lock(&self.credentials).insert(record.id.clone(), secrets);
        }
        self.spawn(record.id.clone());
        self.changed();
        Ok(record)
    }

    fn spawn(self: &Arc<Self>, id: String) {
        let runner = self.clone();
        let mut running = lock(&self.running);
        let key = id.clone();
        // Created before the build can start, so a cancel always finds it (a notification
        // sent before the build listens is kept).
        lock(&self.cancels).insert(id.clone(), Arc::new(tokio::sync::Notify::new()));
        let handle = tokio::spawn(async move {
            // Before taking a worker: the builtin base may need a worker of its own.
            let wanted = id.clone();
            let needs_base = runner
                .off_runtime(move |runner| {
                    Ok(runner
                        .store
                        .build(None, &wanted)?
                        .is_some_and(|record| runner.needs_builtin_base(&record)))
                })
                .await
                .unwrap_or(false);
            if needs_base {
                if let Err(error) = runner.builtin_base().await {
                    tracing::warn!("build {id}: {}", error.message);
                }
            }
            let permit = runner.permits.clone().acquire_owned().await;
            if permit.is_ok() {
                if let Err(error) = runner.run(&id).await {
                    tracing::error!("build {id}: {error}");
                }
            }
            lock(&runner.running).remove(&id);
            lock(&runner.cancels).remove(&id);
            runner.changed();
        });
        running.insert(key, handle.abort_handle());
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
        };
        if self.store.finish(id, &finish, &[cancelled, end])? {
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

    /// After a restart: builds left `building` failed with the server; `waiting` builds run
    /// again, unless they needed credentials, which did not survive.
    pub fn recover(self: &Arc<Self>) -> Result<(), StoreError> {
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
            } else {
                self.spawn(id);
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
        let detail = ErrorDetail {
            phase,
            message: message.into(),
        };
        let mut error = entry(LogKind::Error, LogLevel::Error, message).phase(LogPhase::Finalize);
        error.error_detail = Some(detail);
        let mut end =
            entry(LogKind::End, LogLevel::Error, "build ended: error").phase(LogPhase::Finalize);
        end.result = Some(BuildStatus::Error);
        let finish = Finish {
            status: BuildStatus::Error,
            finished_at: now.into(),
            duration_ms: record.and_then(|r| duration_since(r.started_at.as_deref())),
            failure_phase: Some(phase),
            error_message: Some(message.into()),
            result: None,
            cache_summary: None,
        };
        let done = self.store.finish(id, &finish, &[error, end])?;
        self.changed();
        Ok(done)
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

    /// `waiting` → `building`; the record and the request-time secrets it needs, or `None`
    /// when the build is no longer waiting or its secrets are gone (then it has failed).
    fn start(&self, id: &str) -> Result<Option<(BuildRecord, RequestSecrets)>, StoreError> {
        let now = ids::now_rfc3339();
        let start = entry(LogKind::Start, LogLevel::Info, "build started")
            .phase(LogPhase::Preparing)
            .step(1, IMPORT_STEPS);
        if !self.store.mark_building(id, &now, &start)? {
            return Ok(None);
        }
        self.changed();
        let Some(record) = self.store.build(None, id)? else {
            return Ok(None);
        };
        let held = lock(&self.credentials).remove(id);
        let credentials = match held {
            Some(secrets) => secrets,
            None if !record.definition.needs_request_secrets() => RequestSecrets::default(),
            None => {
                self.fail(
                    id,
                    Some(&record),
                    FailurePhase::Prepare,
                    "base-image credentials, registry credentials or build secrets are no longer available; retry with fresh ones",
                    &now,
                )?;
                return Ok(None);
            }
        };
        Ok(Some((record, credentials)))
    }

    async fn run(self: &Arc<Self>, id: &str) -> Result<(), StoreError> {
        let started = {
            let id = id.to_string();
            self.off_runtime(move |runner| runner.start(&id)).await?
        };
        let Some((record, credentials)) = started else {
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
                let result = BuildResult {
                    runtime_defaults: document.runtime_defaults.clone(),
                    oci_metadata: document.oci_metadata.clone(),
                    source_digest: Some(document.source.manifest_digest.clone()),
                    artifact_dir: outcome.artifact_dir.to_string_lossy().into_owned(),
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
                };
                let recorded = self.finish_persistently(
                    id,
                    &finish,
                    &[with_ids(published, &record), with_ids(end, &record)],
                );
                if !matches!(recorded, Ok(true)) {
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
                let mut failed = entry(LogKind::Error, LogLevel::Error, message.clone())
                    .phase(LogPhase::Finalize);
                failed.error_detail = Some(ErrorDetail {
                    phase,
                    message: message.clone(),
                });
                let mut end = entry(LogKind::End, LogLevel::Error, "build ended: error")
                    .phase(LogPhase::Finalize);
                end.result = Some(BuildStatus::Error);
                let finish = Finish {
                    status: BuildStatus::Error,
                    finished_at: now,
                    duration_ms: duration_since(record.started_at.as_deref()),
                    failure_phase: Some(phase),
                    error_message: Some(message),
                    result: None,
                    cache_summary: Some(cache_summary),
                };
                self.finish_persistently(
                    id,
                    &finish,
                    &[with_ids(failed, &record), with_ids(end, &record)],
                )?;
                self.changed();
            }
        }
        Ok(())
    }
}

impl Runner {
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
