//! The worker side of the queue: claiming builds under a lease, renewing it, taking over the
//! builds of workers that died, handing builds back on shutdown, and the polling that lets a
//! process see what other processes wrote.

use std::sync::Arc;
use std::time::{Duration, Instant};

use nullspace_api::{BuildStatus, FailurePhase, LogKind, LogLevel, LogPhase};
use nullspace_build::ids;

use crate::entry::{entry, IMPORT_STEPS};
use crate::store::{Finish, StoreError};

use super::{lock, Runner};

/// Attempts a build gets: its first run and one retry after its worker was lost.
pub const MAX_ATTEMPTS: u32 = 2;
/// How often a process looks for work and for lapsed leases when nothing wakes it.
const POLL: Duration = Duration::from_millis(500);
/// How often a process with a shared store tells its followers to look again.
const SHARED_TICK: Duration = Duration::from_millis(300);

impl Runner {
    /// Starts this process's background work: the worker loop (if it runs builds), the lease
    /// reaper, and, with a shared store, the tick that makes log followers poll.
    pub fn start(self: &Arc<Self>) {
        if self.deployment.role.runs_builds() {
            tokio::spawn(self.clone().work());
        }
        tokio::spawn(self.clone().reap());
        if self.store.is_shared() {
            let runner = self.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(SHARED_TICK).await;
                    runner.changed();
                }
            });
        }
    }

    /// Claims and runs builds while workers are free, until drained.
    async fn work(self: Arc<Self>) {
        let mut draining = self.draining.subscribe();
        loop {
            let Ok(permit) = self.permits.clone().acquire_owned().await else {
                return;
            };
            if *draining.borrow() {
                return;
            }
            let claimed = self
                .off_runtime(|runner| {
                    let start = entry(LogKind::Start, LogLevel::Info, "build started")
                        .phase(LogPhase::Preparing)
                        .step(1, IMPORT_STEPS);
                    runner.store.claim_next(
                        &runner.deployment.instance,
                        runner.deployment.lease,
                        &ids::now_rfc3339(),
                        &start,
                    )
                })
                .await;
            match claimed {
                Ok(Some(record)) => {
                    let id = record.id.clone();
                    tracing::info!("build {id}: claimed by {}", self.deployment.instance);
                    lock(&self.metrics).claims += 1;
                    self.changed();
                    let runner = self.clone();
                    let key = id.clone();
                    lock(&self.cancels)
                        .entry(id.clone())
                        .or_insert_with(|| Arc::new(tokio::sync::Notify::new()));
                    // Held across the spawn: the task removes its entry only after it is in.
                    let mut running = lock(&self.running);
                    let handle = tokio::spawn(async move {
                        if let Err(error) = runner.run(record).await {
                            tracing::error!("build {id}: {error}");
                        }
                        lock(&runner.running).remove(&id);
                        lock(&runner.cancels).remove(&id);
                        drop(permit);
                        runner.wake.notify_one();
                        runner.changed();
                    });
                    running.insert(key, handle.abort_handle());
                }
                Ok(None) => {
                    drop(permit);
                    tokio::select! {
                        _ = self.wake.notified() => {}
                        _ = tokio::time::sleep(POLL) => {}
                        _ = draining.changed() => {}
                    }
                }
                Err(error) => {
                    drop(permit);
                    tracing::warn!("claiming a build: {error}");
                    tokio::time::sleep(POLL * 4).await;
                }
            }
        }
    }

    /// Renews this worker's lease on build `id` every tenth of the lease; when the build is
    /// no longer this worker's (cancelled, or taken over after a lapse) or the store has not
    /// confirmed the lease for a whole lease period, notifies `stop`.
    pub(super) fn keep_lease(
        self: &Arc<Self>,
        id: &str,
        stop: Arc<tokio::sync::Notify>,
    ) -> tokio::task::AbortHandle {
        let runner = self.clone();
        let id = id.to_string();
        let lease = self.deployment.lease;
        tokio::spawn(async move {
            let mut confirmed = Instant::now();
            loop {
                tokio::time::sleep(lease / 10).await;
                let wanted = id.clone();
                let renewed = runner
                    .off_runtime(move |runner| {
                        runner
                            .store
                            .renew_lease(&wanted, &runner.deployment.instance, lease)
                    })
                    .await;
                match renewed {
                    Ok(true) => confirmed = Instant::now(),
                    Ok(false) => {
                        tracing::info!("build {id}: no longer this worker's (cancelled or taken over); stopping it");
                        stop.notify_one();
                        return;
                    }
                    Err(error) if confirmed.elapsed() >= lease => {
                        tracing::warn!("build {id}: lease not renewed for {lease:?} ({error}); stopping it so no other worker runs it at the same time");
                        stop.notify_one();
                        return;
                    }
                    Err(error) => tracing::warn!("build {id}: renewing its lease: {error}"),
                }
            }
        })
        .abort_handle()
    }

    /// Takes over the builds of workers whose lease lapsed: back to the queue once, then
    /// `error` with the reason. Every process runs this; the store's conditions make each
    /// takeover happen once.
    async fn reap(self: Arc<Self>) {
        // A lapse is acted on only after a grace period, so a worker that lost the store
        // stops its build (after one lease without renewal) before anyone else starts it.
        let grace = self.deployment.lease / 2;
        loop {
            tokio::time::sleep(POLL.max(self.deployment.lease / 10)).await;
            let reaped = self
                .off_runtime(move |runner| runner.reap_once(grace))
                .await;
            match reaped {
                Ok(0) => {}
                Ok(_) => {
                    self.wake.notify_one();
                    self.changed();
                }
                Err(error) => tracing::warn!("taking over lapsed builds: {error}"),
            }
        }
    }

    fn reap_once(&self, grace: Duration) -> Result<usize, StoreError> {
        let mut changed = 0;
        for lapsed in self.store.expired_leases(grace)? {
            let mut note = entry(
                LogKind::Retry,
                LogLevel::Warn,
                format!(
                    "worker {} stopped renewing its lease (it died or lost the database) during attempt {}; the build goes back to the queue",
                    lapsed.worker, lapsed.attempts
                ),
            );
            note.phase = Some(LogPhase::Retry);
            if self
                .store
                .requeue(&lapsed.id, &lapsed.worker, Some(grace), MAX_ATTEMPTS, &note)?
            {
                tracing::warn!(
                    "build {}: worker {} lost; requeued",
                    lapsed.id,
                    lapsed.worker
                );
                lock(&self.metrics).lease_takeovers += 1;
                changed += 1;
                continue;
            }
            let record = self.store.build(None, &lapsed.id)?;
            if record
                .as_ref()
                .is_some_and(|r| r.status == BuildStatus::Building)
            {
                let message = format!(
                    "worker {} stopped renewing its lease (it died or lost the database) during attempt {} of {MAX_ATTEMPTS}; nothing was published; retry the build",
                    lapsed.worker, lapsed.attempts
                );
                if self.fail(
                    &lapsed.id,
                    record.as_ref(),
                    FailurePhase::Build,
                    &message,
                    &ids::now_rfc3339(),
                )? {
                    lock(&self.metrics).lease_takeovers += 1;
                    changed += 1;
                }
            }
        }
        Ok(changed)
    }

    /// Stops claiming; waits up to the drain timeout for running builds, then stops the rest
    /// and hands them back to the queue (another worker, or this one after a restart, runs them).
    pub async fn drain(self: &Arc<Self>) {
        self.draining.send_replace(true);
        let deadline = Instant::now() + self.deployment.drain_timeout;
        loop {
            let running: Vec<String> = lock(&self.running).keys().cloned().collect();
            if running.is_empty() {
                return;
            }
            if Instant::now() >= deadline {
                for id in running {
                    if let Some(stop) = lock(&self.cancels).get(&id).cloned() {
                        stop.notify_one();
                    }
                    let wanted = id.clone();
                    let handed = self
                        .off_runtime(move |runner| {
                            let mut note = entry(
                                LogKind::Retry,
                                LogLevel::Warn,
                                format!(
                                    "worker {} is shutting down; the build goes back to the queue",
                                    runner.deployment.instance
                                ),
                            );
                            note.phase = Some(LogPhase::Retry);
                            runner.store.requeue(
                                &wanted,
                                &runner.deployment.instance,
                                None,
                                MAX_ATTEMPTS,
                                &note,
                            )
                        })
                        .await;
                    match handed {
                        Ok(true) => tracing::info!("build {id}: handed back to the queue"),
                        Ok(false) => {}
                        Err(error) => tracing::warn!("build {id}: handing it back: {error}"),
                    }
                }
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Counts a recorded end for `/metrics`.
    pub(super) fn count_finish(&self, finish: &Finish) {
        lock(&self.metrics).record(finish);
    }

    /// This process's metrics in Prometheus' text format, with the store's queue depth.
    pub fn metrics_text(&self) -> Result<String, StoreError> {
        let depth = self.store.queue_depth()?;
        let running = lock(&self.running).len();
        Ok(lock(&self.metrics).render(&depth, running, &self.deployment))
    }

    /// Whether the process is draining (readiness turns false).
    pub fn is_draining(&self) -> bool {
        *self.draining.borrow()
    }

    /// After a worker published a build on a shared store: this host's engine records the
    /// artifact as a ready build too, so its garbage collection keeps it.
    pub(super) fn after_publish(
        &self,
        record: &crate::store::BuildRecord,
        artifact_dir: &std::path::Path,
        now: &str,
    ) {
        if !self.store.is_shared() {
            return;
        }
        let engine_store = self.engine.store();
        if let Err(error) =
            engine_store.publish(&record.id, &record.template_id, &[], artifact_dir, now)
        {
            tracing::warn!(
                "build {}: recording its artifact on this host: {error}",
                record.id
            );
        }
    }
}
