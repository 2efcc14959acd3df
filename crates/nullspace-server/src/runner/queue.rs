//! The worker side of the queue: claiming builds under a lease, renewing it, taking over the
//! builds of workers that died, handing builds back on shutdown, and the polling that lets a
//! process see what other processes wrote.

use std::sync::Arc;
use std::time::{Duration, Instant};

use nullspace_api::{FailurePhase, LogKind, LogLevel, LogPhase};
use nullspace_build::ids;

use crate::entry::{entry, IMPORT_STEPS};
use crate::store::{Finish, Requeue, StoreError};

use super::{lock, Runner};

/// Attempts a build gets: its first run and one retry after its worker was lost.
pub const MAX_ATTEMPTS: u32 = 2;
/// How often a process looks for work and for lapsed leases when nothing wakes it.
const POLL: Duration = Duration::from_millis(500);
/// How long an answer of the open probes (`/readyz`, `/metrics`) is reused.
const PROBE_CACHE: Duration = Duration::from_secs(1);
/// How often a process with a shared store tells its followers to look again.
const SHARED_TICK: Duration = Duration::from_millis(300);

/// The last answers of the open probes.
#[derive(Debug, Default)]
pub struct Probes {
    depth: Option<(Instant, crate::store::QueueDepth)>,
    ping: Option<Instant>,
}

impl Runner {
    /// Starts this process's background work: the worker loop (if it runs builds), the lease
    /// reaper, and, with a shared store, the tick that makes log followers poll.
    pub fn start(self: &Arc<Self>) {
        // Before this process takes any request: a build it holds is never taken for a dead
        // process's (the reaper keeps this up).
        if let Err(error) = self.store.heartbeat(&self.deployment.instance) {
            tracing::warn!("recording this process as alive: {error}");
        }
        if self.deployment.role.runs_builds() {
            let work = tokio::spawn(self.clone().work());
            *lock(&self.work_loop) = Some(work);
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
            let permit = tokio::select! {
                permit = self.permits.clone().acquire_owned() => permit,
                _ = draining.wait_for(|d| *d) => return,
            };
            let Ok(permit) = permit else {
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
                // However the store answers (or hangs), the build stops once a whole lease
                // passed unconfirmed: by then another worker may take it over.
                let left = lease.saturating_sub(confirmed.elapsed());
                if left.is_zero() {
                    tracing::warn!("build {id}: lease not renewed for {lease:?}; stopping it so no other worker runs it at the same time");
                    stop.notify_one();
                    return;
                }
                let wanted = id.clone();
                let renewed = tokio::time::timeout(
                    left,
                    runner.off_runtime(move |runner| {
                        runner
                            .store
                            .renew_lease(&wanted, &runner.deployment.instance, lease)
                    }),
                )
                .await;
                match renewed {
                    Ok(Ok(true)) => confirmed = Instant::now(),
                    Ok(Ok(false)) => {
                        tracing::info!("build {id}: no longer this worker's (cancelled or taken over); stopping it");
                        stop.notify_one();
                        return;
                    }
                    Ok(Err(error)) => tracing::warn!("build {id}: renewing its lease: {error}"),
                    Err(_) => tracing::warn!("build {id}: renewing its lease timed out"),
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
        // Apart from the takeovers: its failures (one unreadable record) must not stop them.
        let mut changed = self.end_orphaned_held_builds(grace);
        for lapsed in self.store.expired_leases(grace)? {
            if lapsed.worker == self.deployment.instance
                && lock(&self.running).contains_key(&lapsed.id)
            {
                // Ours and running: its renewals are late, and it stops itself if they fail.
                continue;
            }
            let mut note = entry(
                LogKind::Retry,
                LogLevel::Warn,
                format!(
                    "worker {} stopped renewing its lease (it died or lost the database) during attempt {}; the build goes back to the queue",
                    lapsed.worker, lapsed.attempts
                ),
            );
            note.phase = Some(LogPhase::Retry);
            let outcome =
                self.store
                    .requeue(&lapsed.id, &lapsed.worker, Some(grace), MAX_ATTEMPTS, &note)?;
            match outcome {
                Requeue::Requeued => {
                    tracing::warn!(
                        "build {}: worker {} lost; requeued",
                        lapsed.id,
                        lapsed.worker
                    );
                }
                Requeue::Exhausted => {
                    let message = format!(
                        "worker {} stopped renewing its lease (it died or lost the database) during attempt {} of {MAX_ATTEMPTS}; it is not run again (its attempts are used up, or its request-time credentials were only in that worker's memory); nothing was published; retry the build",
                        lapsed.worker, lapsed.attempts
                    );
                    let record = self.store.build(None, &lapsed.id)?;
                    if !self.fail_held(
                        &lapsed.id,
                        record.as_ref(),
                        FailurePhase::Build,
                        &message,
                        &ids::now_rfc3339(),
                        Some(&lapsed.worker),
                    )? {
                        continue;
                    }
                }
                Requeue::Unchanged => continue,
            }
            lock(&self.metrics).lease_takeovers += 1;
            changed += 1;
        }
        Ok(changed)
    }

    /// Says this process is alive, then ends the `waiting` builds whose request-time
    /// credentials were in the memory of a process silent for a lease and `grace`: no other
    /// process may run them (the credentials never reach the store), so they would wait for
    /// ever. Failures are logged, build by build.
    fn end_orphaned_held_builds(&self, grace: Duration) -> usize {
        if let Err(error) = self.store.heartbeat(&self.deployment.instance) {
            tracing::warn!("recording this process as alive: {error}");
        }
        let orphaned = match self
            .store
            .orphaned_held_builds(self.deployment.lease + grace)
        {
            Ok(orphaned) => orphaned,
            Err(error) => {
                tracing::warn!("looking for builds held by stopped processes: {error}");
                return 0;
            }
        };
        let message = "base-image credentials, registry credentials and build secrets are held in memory only, and the server process that took them stopped before a worker started the build; retry with fresh base_image_auth, registry_auth and build_secrets";
        let mut ended = 0;
        for id in orphaned {
            let record = self.store.build(None, &id).ok().flatten();
            match self.fail(
                &id,
                record.as_ref(),
                FailurePhase::Prepare,
                message,
                &ids::now_rfc3339(),
            ) {
                Ok(true) => {
                    tracing::warn!(
                        "build {id}: the process holding its credentials stopped; ended"
                    );
                    ended += 1;
                }
                Ok(false) => {}
                Err(error) => tracing::warn!("build {id}: ending it: {error}"),
            }
        }
        ended
    }

    /// Stops claiming; waits up to the drain timeout for running builds, then stops the rest
    /// and hands them back to the queue (another worker, or this one after a restart, runs them).
    pub async fn drain(self: &Arc<Self>) {
        self.draining.send_replace(true);
        let deadline = Instant::now() + self.deployment.drain_timeout;
        // A claim under way finishes first, so its build is counted below.
        let work = lock(&self.work_loop).take();
        if let Some(work) = work {
            let _ = work.await;
        }
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
                        Ok(Requeue::Requeued) => {
                            tracing::info!("build {id}: handed back to the queue");
                        }
                        Ok(Requeue::Exhausted) => {
                            // Its request-time credentials die with this process.
                            let wanted = id.clone();
                            let _ = self
                                .off_runtime(move |runner| {
                                    let record = runner.store.build(None, &wanted)?;
                                    runner.fail_held(
                                        &wanted,
                                        record.as_ref(),
                                        FailurePhase::Build,
                                        "the worker running this build shut down, and its request-time credentials were only in that worker's memory; retry the build",
                                        &ids::now_rfc3339(),
                                        Some(&runner.deployment.instance),
                                    )
                                })
                                .await;
                        }
                        Ok(Requeue::Unchanged) => {}
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

    /// This process's metrics in Prometheus' text format, with the store's queue depth (read
    /// at most once a second: the endpoint is open, and the store's connections are for work).
    pub fn metrics_text(&self) -> Result<String, StoreError> {
        let cached = lock(&self.probes)
            .depth
            .clone()
            .filter(|(at, _)| at.elapsed() < PROBE_CACHE);
        let depth = match cached {
            Some((_, depth)) => depth,
            None => {
                let depth = self.store.queue_depth()?;
                lock(&self.probes).depth = Some((Instant::now(), depth.clone()));
                depth
            }
        };
        let running = lock(&self.running).len();
        Ok(lock(&self.metrics).render(&depth, running, &self.deployment))
    }

    /// Whether the store answers (asked at most once a second).
    pub fn store_answers(&self) -> Result<(), StoreError> {
        let recent = lock(&self.probes)
            .ping
            .filter(|at| at.elapsed() < PROBE_CACHE)
            .is_some();
        if !recent {
            self.store.ping()?;
            lock(&self.probes).ping = Some(Instant::now());
        }
        Ok(())
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
