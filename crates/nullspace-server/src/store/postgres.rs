//! [`BuildStore`] on PostgreSQL, for many hosts: `tokio-postgres` through a `deadpool` pool.
//!
//! The trait's calls block (the server reaches the store off its async workers), so the pool
//! lives on a small runtime of its own and each call waits for its task there: that works from
//! any thread, including a runtime's blocking pool, and never blocks this runtime's workers.
//!
//! Every transaction that appends log entries first locks the build's row, so a build's entry
//! offsets are assigned one at a time and committed in order: a follower reading by offset on
//! any host sees no gap and no duplicate.

use std::future::Future;
use std::time::Duration;

use deadpool_postgres::Transaction;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::NoTls;

use nullspace_api::sandbox::SandboxInfo;
use nullspace_api::BuildStatus;

use crate::entry::LogEntry;

use super::postgres_schema::{MIGRATIONS, MIGRATION_LOCK};
use super::{
    entry_json, BuildRecord, BuildStore, ExpiredLease, Finish, HistoryFilter, QueueDepth, Queueing,
    Requeue, StoreError, TemplateRow,
};

/// Connections a process keeps at most.
const POOL_SIZE: usize = 16;
/// How long a call waits for a connection, and a connection for the server.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// [`BuildStore`] on PostgreSQL.
pub struct PgStore {
    pool: Pool,
    /// The driver's runtime; shut down in the background on drop (dropping a runtime inside
    /// another one's async context would panic).
    runtime: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
}

/// The error of `what`, with PostgreSQL's own message and detail when it sent one.
fn pg(what: &'static str) -> impl Fn(tokio_postgres::Error) -> StoreError {
    move |error| {
        let message = match error.as_db_error() {
            Some(db) => match db.detail() {
                Some(detail) => format!("{} ({detail})", db.message()),
                None => db.message().to_string(),
            },
            None => error.to_string(),
        };
        StoreError::Postgres { what, message }
    }
}

fn corrupt(what: &'static str) -> impl Fn(serde_json::Error) -> StoreError {
    move |source| StoreError::Corrupt {
        path: "postgresql".into(),
        what,
        source,
    }
}

fn decode<T: serde::de::DeserializeOwned>(what: &'static str, text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(corrupt(what))
}

fn encode<T: serde::Serialize>(what: &'static str, value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(corrupt(what))
}

fn seconds(duration: Duration) -> f64 {
    duration.as_secs_f64()
}

async fn client(pool: &Pool) -> Result<deadpool_postgres::Object, StoreError> {
    pool.get().await.map_err(|error| StoreError::Postgres {
        what: "connecting",
        message: error.to_string(),
    })
}

/// Appends `entry` to build `id` at the next offset; the caller holds the build's row lock.
async fn insert_entry(tx: &Transaction<'_>, id: &str, entry: &LogEntry) -> Result<u64, StoreError> {
    let row = tx
        .query_one(
            "SELECT template_id, (SELECT COALESCE(MAX(entry_offset) + 1, 0) FROM api_log_entries WHERE build_id = $1)
             FROM api_builds WHERE id = $1",
            &[&id],
        )
        .await
        .map_err(pg("reading a build's log offset"))?;
    let template_id: String = row.get(0);
    let next: i64 = row.get(1);
    let offset = u64::try_from(next).unwrap_or(0);
    tx.execute(
        "INSERT INTO api_log_entries (build_id, entry_offset, entry) VALUES ($1, $2, $3)",
        &[&id, &next, &entry_json(entry, id, &template_id, offset)],
    )
    .await
    .map_err(pg("appending a log entry"))?;
    Ok(offset)
}

/// What claims `name` in `namespace` (a template's name or an alias), as a message.
async fn name_claim(
    tx: &Transaction<'_>,
    namespace: &str,
    name: &str,
) -> Result<Option<String>, StoreError> {
    if let Some(row) = tx
        .query_opt(
            "SELECT id FROM templates WHERE namespace = $1 AND name = $2",
            &[&namespace, &name],
        )
        .await
        .map_err(pg("reading template names"))?
    {
        let id: String = row.get(0);
        return Ok(Some(format!("{name:?} is the name of template {id}")));
    }
    Ok(tx
        .query_opt(
            "SELECT template_id FROM template_aliases WHERE namespace = $1 AND alias = $2",
            &[&namespace, &name],
        )
        .await
        .map_err(pg("reading template aliases"))?
        .map(|row| {
            let id: String = row.get(0);
            format!("{name:?} is an alias of template {id}")
        }))
}

/// Serialises name changes within one namespace (a name and an alias live in two tables, so
/// their uniqueness across both is kept by this lock, not by a constraint).
async fn lock_namespace(tx: &Transaction<'_>, namespace: &str) -> Result<(), StoreError> {
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext('nullspace-namespace:' || $1))",
        &[&namespace],
    )
    .await
    .map_err(pg("locking a namespace"))?;
    Ok(())
}

async fn migrate(pool: &Pool) -> Result<(), StoreError> {
    let mut client = client(pool).await?;
    let tx = client
        .transaction()
        .await
        .map_err(pg("starting the migration"))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(pg("locking the schema"))?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS nullspace_schema (version INTEGER NOT NULL)")
        .await
        .map_err(pg("creating nullspace_schema"))?;
    let version: i32 = tx
        .query_opt("SELECT version FROM nullspace_schema", &[])
        .await
        .map_err(pg("reading the schema version"))?
        .map_or(0, |row| row.get(0));
    let current = usize::try_from(version).unwrap_or(usize::MAX);
    if current > MIGRATIONS.len() {
        return Err(StoreError::Migration {
            path: "postgresql".into(),
            message: format!(
                "the database is at schema version {current}, newer than this binary's {}; upgrade the binary",
                MIGRATIONS.len()
            ),
        });
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(current) {
        tx.batch_execute(sql)
            .await
            .map_err(|error| StoreError::Migration {
                path: "postgresql".into(),
                message: format!("migration {}: {}", index + 1, pg("migrating")(error)),
            })?;
    }
    let latest = i32::try_from(MIGRATIONS.len()).unwrap_or(i32::MAX);
    tx.execute("DELETE FROM nullspace_schema", &[])
        .await
        .map_err(pg("writing the schema version"))?;
    tx.execute(
        "INSERT INTO nullspace_schema (version) VALUES ($1)",
        &[&latest],
    )
    .await
    .map_err(pg("writing the schema version"))?;
    tx.commit().await.map_err(pg("committing the migration"))
}

impl PgStore {
    /// Connects to `url` (`postgres://user:password@host:port/db`), bringing the schema up to
    /// date. The URL comes from the operator; errors never repeat its password.
    pub fn connect(url: &str) -> Result<PgStore, StoreError> {
        let config: tokio_postgres::Config = url.parse().map_err(|error| StoreError::Postgres {
            what: "parsing the database URL",
            message: format!("{error}"),
        })?;
        let mut config = config;
        config.connect_timeout(CONNECT_TIMEOUT);
        config.application_name("nullspace");
        // A half-open connection is noticed, and no statement runs for ever: lease renewals
        // must fail in time for a worker to stop before another takes its build over.
        config.keepalives(true);
        config.keepalives_idle(Duration::from_secs(10));
        if config.get_options().is_none() {
            config.options("-c statement_timeout=30000");
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("nullspace-pg")
            .enable_all()
            .build()
            .map_err(|error| {
                StoreError::Task(format!("starting the PostgreSQL runtime: {error}"))
            })?;
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(CONNECT_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|error| StoreError::Postgres {
                what: "building the connection pool",
                message: error.to_string(),
            })?;
        let store = PgStore {
            handle: runtime.handle().clone(),
            runtime: Some(runtime),
            pool,
        };
        let pool = store.pool.clone();
        store.block(async move { migrate(&pool).await })?;
        Ok(store)
    }

    /// Runs `future` on the driver's runtime and waits for it.
    fn block<T, F>(&self, future: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        let (sender, receiver) = std::sync::mpsc::sync_channel(1);
        self.handle.spawn(async move {
            let _ = sender.send(future.await);
        });
        receiver
            .recv()
            .map_err(|_| StoreError::Task("the PostgreSQL task stopped".into()))?
    }

    /// Runs `f` with a pooled connection.
    fn with<T, F, Fut>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(deadpool_postgres::Object) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, StoreError>> + Send,
    {
        let pool = self.pool.clone();
        self.block(async move { f(client(&pool).await?).await })
    }

    fn templates_of(&self, owner: &str) -> Result<Vec<TemplateRow>, StoreError> {
        let owner = owner.to_string();
        self.with(move |c| async move {
            let rows = c
                .query(
                    "SELECT t.id, t.name, g.tag, g.build_id FROM templates t
                     LEFT JOIN tags g ON g.template_id = t.id
                     WHERE t.namespace = $1 ORDER BY t.name COLLATE \"C\", g.tag COLLATE \"C\"",
                    &[&owner],
                )
                .await
                .map_err(pg("listing templates"))?;
            let mut out: Vec<TemplateRow> = Vec::new();
            for row in rows {
                let id: String = row.get(0);
                if out.last().is_none_or(|last| last.id != id) {
                    out.push(TemplateRow {
                        id: id.clone(),
                        namespace: owner.clone(),
                        name: row.get(1),
                        tags: Vec::new(),
                        aliases: Vec::new(),
                    });
                }
                let tag: Option<String> = row.get(2);
                let build: Option<String> = row.get(3);
                if let (Some(tag), Some(build), Some(last)) = (tag, build, out.last_mut()) {
                    last.tags.push((tag, build));
                }
            }
            let aliases = c
                .query(
                    "SELECT template_id, alias FROM template_aliases WHERE namespace = $1 ORDER BY alias COLLATE \"C\"",
                    &[&owner],
                )
                .await
                .map_err(pg("listing aliases"))?;
            for row in aliases {
                let template_id: String = row.get(0);
                if let Some(template) = out.iter_mut().find(|t| t.id == template_id) {
                    template.aliases.push(row.get(1));
                }
            }
            Ok(out)
        })
    }

    /// Rewrites the tags list of a build's record (`add` or remove `tag`) inside `tx`.
    async fn retag_record(
        tx: &Transaction<'_>,
        build_id: &str,
        tag: &str,
        add: bool,
    ) -> Result<(), StoreError> {
        let Some(row) = tx
            .query_opt(
                "SELECT record FROM api_builds WHERE id = $1 FOR UPDATE",
                &[&build_id],
            )
            .await
            .map_err(pg("reading a build"))?
        else {
            return Ok(());
        };
        let text: String = row.get(0);
        let mut record: BuildRecord = decode("build record", &text)?;
        if add {
            if !record.tags.iter().any(|t| t == tag) {
                record.tags.push(tag.to_string());
            }
        } else {
            record.tags.retain(|t| t != tag);
        }
        record.updated_at = nullspace_build::ids::now_rfc3339();
        tx.execute(
            "UPDATE api_builds SET record = $2 WHERE id = $1",
            &[&build_id, &encode("build record", &record)?],
        )
        .await
        .map_err(pg("updating a build"))?;
        Ok(())
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl BuildStore for PgStore {
    fn ensure_template(
        &self,
        owner: &str,
        name: &str,
        new_id: &str,
        now: &str,
    ) -> Result<String, StoreError> {
        let (owner, name, new_id, now) = (
            owner.to_string(),
            name.to_string(),
            new_id.to_string(),
            now.to_string(),
        );
        self.with(move |c| async move {
            c.execute(
                "INSERT INTO templates (id, namespace, name, created_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT DO NOTHING",
                &[&new_id, &owner, &name, &now],
            )
            .await
            .map_err(pg("creating a template"))?;
            let row = c
                .query_one(
                    "SELECT id FROM templates WHERE namespace = $1 AND name = $2",
                    &[&owner, &name],
                )
                .await
                .map_err(pg("reading a template"))?;
            Ok(row.get(0))
        })
    }

    fn insert_build(
        &self,
        record: &BuildRecord,
        queueing: &Queueing,
        first: &LogEntry,
    ) -> Result<(), StoreError> {
        let json = encode("build record", record)?;
        let (record, queueing, first) = (record.clone(), queueing.clone(), first.clone());
        self.with(move |mut c| async move {
            let tx = c.transaction().await.map_err(pg("recording a build"))?;
            tx.execute(
                "INSERT INTO api_builds (id, owner, template_id, status, backend, record, holder, wait_for)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                &[
                    &record.id,
                    &record.owner,
                    &record.template_id,
                    &record.status.as_str(),
                    &record.definition.build_backend.as_str(),
                    &json,
                    &queueing.holder,
                    &queueing.wait_for,
                ],
            )
            .await
            .map_err(pg("recording a build"))?;
            insert_entry(&tx, &record.id, &first).await?;
            tx.commit().await.map_err(pg("recording a build"))
        })
    }

    fn build(&self, owner: Option<&str>, id: &str) -> Result<Option<BuildRecord>, StoreError> {
        let (owner, id) = (owner.map(str::to_string), id.to_string());
        let text: Option<String> = self.with(move |c| async move {
            let row = c
                .query_opt(
                    "SELECT record FROM api_builds WHERE id = $1 AND ($2::TEXT IS NULL OR owner = $2)",
                    &[&id, &owner],
                )
                .await
                .map_err(pg("reading a build"))?;
            Ok(row.map(|row| row.get(0)))
        })?;
        text.map(|t| decode("build record", &t)).transpose()
    }

    fn claim_next(
        &self,
        worker: &str,
        lease: Duration,
        now: &str,
        entry: &LogEntry,
    ) -> Result<Option<BuildRecord>, StoreError> {
        let (worker, now, entry) = (worker.to_string(), now.to_string(), entry.clone());
        self.with(move |mut c| async move {
            let tx = c.transaction().await.map_err(pg("claiming a build"))?;
            // The oldest claimable build this process can read: a record it cannot decode (one
            // written by a newer version during a rolling upgrade) is passed over, not allowed
            // to stop the queue.
            let mut unreadable: Vec<String> = Vec::new();
            let (id, mut record) = loop {
                if unreadable.len() >= super::UNREADABLE_RECORDS_PASSED {
                    return Ok(None);
                }
                // SKIP LOCKED: workers claiming at once each take a different build, never wait.
                let Some(row) = tx
                    .query_opt(
                        "SELECT b.id, b.record FROM api_builds b
                         WHERE b.status = 'waiting' AND (b.holder IS NULL OR b.holder = $1)
                           AND (b.wait_for IS NULL OR NOT EXISTS (
                             SELECT 1 FROM api_builds d WHERE d.id = b.wait_for AND d.status IN ('waiting', 'building')))
                           AND NOT (b.id = ANY($2))
                         ORDER BY b.seq LIMIT 1 FOR UPDATE OF b SKIP LOCKED",
                        &[&worker, &unreadable],
                    )
                    .await
                    .map_err(pg("claiming a build"))?
                else {
                    return Ok(None);
                };
                let id: String = row.get(0);
                match decode::<BuildRecord>("build record", row.get::<_, &str>(1)) {
                    Ok(record) => break (id, record),
                    Err(error) => {
                        super::pass_over_unreadable(&id, &error);
                        unreadable.push(id);
                    }
                }
            };
            record.claimed(&now);
            tx.execute(
                "UPDATE api_builds SET status = 'building', record = $2, worker = $3,
                   lease_expires_at = now() + make_interval(secs => $4), attempts = attempts + 1
                 WHERE id = $1",
                &[&id, &encode("build record", &record)?, &worker, &seconds(lease)],
            )
            .await
            .map_err(pg("claiming a build"))?;
            insert_entry(&tx, &id, &entry).await?;
            tx.commit().await.map_err(pg("claiming a build"))?;
            Ok(Some(record))
        })
    }

    fn renew_lease(&self, id: &str, worker: &str, lease: Duration) -> Result<bool, StoreError> {
        let (id, worker) = (id.to_string(), worker.to_string());
        self.with(move |c| async move {
            let changed = c
                .execute(
                    "UPDATE api_builds SET lease_expires_at = now() + make_interval(secs => $3)
                     WHERE id = $1 AND worker = $2 AND status = 'building'",
                    &[&id, &worker, &seconds(lease)],
                )
                .await
                .map_err(pg("renewing a lease"))?;
            Ok(changed == 1)
        })
    }

    fn expired_leases(&self, grace: Duration) -> Result<Vec<ExpiredLease>, StoreError> {
        self.with(move |c| async move {
            let rows = c
                .query(
                    "SELECT id, worker, attempts FROM api_builds
                     WHERE status = 'building' AND worker IS NOT NULL
                       AND lease_expires_at < now() - make_interval(secs => $1)
                     ORDER BY seq",
                    &[&seconds(grace)],
                )
                .await
                .map_err(pg("reading expired leases"))?;
            Ok(rows
                .iter()
                .map(|row| ExpiredLease {
                    id: row.get(0),
                    worker: row.get(1),
                    attempts: u32::try_from(row.get::<_, i32>(2)).unwrap_or(0),
                })
                .collect())
        })
    }

    fn heartbeat(&self, instance: &str) -> Result<(), StoreError> {
        let instance = instance.to_string();
        self.with(move |c| async move {
            c.execute(
                "INSERT INTO instances (name, seen_at) VALUES ($1, now())
                 ON CONFLICT (name) DO UPDATE SET seen_at = excluded.seen_at",
                &[&instance],
            )
            .await
            .map_err(pg("recording a heartbeat"))?;
            // Processes that stopped long ago are forgotten, once nothing waits for them.
            c.execute(
                "DELETE FROM instances i WHERE i.seen_at < now() - interval '7 days'
                   AND NOT EXISTS (SELECT 1 FROM api_builds b
                                   WHERE b.status = 'waiting' AND b.holder = i.name)",
                &[],
            )
            .await
            .map_err(pg("recording a heartbeat"))?;
            Ok(())
        })
    }

    fn orphaned_held_builds(&self, silent_for: Duration) -> Result<Vec<String>, StoreError> {
        self.with(move |c| async move {
            let rows = c
                .query(
                    // Only holders that ever wrote a heartbeat are judged: a process of an
                    // older version (a rolling upgrade) writes none and is not taken for dead.
                    "SELECT b.id FROM api_builds b JOIN instances i ON i.name = b.holder
                     WHERE b.status = 'waiting'
                       AND i.seen_at < now() - make_interval(secs => $1)
                     ORDER BY b.seq",
                    &[&seconds(silent_for)],
                )
                .await
                .map_err(pg("reading builds held by silent processes"))?;
            Ok(rows.iter().map(|row| row.get(0)).collect())
        })
    }

    fn requeue(
        &self,
        id: &str,
        worker: &str,
        grace: Option<Duration>,
        max_attempts: u32,
        entry: &LogEntry,
    ) -> Result<Requeue, StoreError> {
        let (id, worker, entry) = (id.to_string(), worker.to_string(), entry.clone());
        let max_attempts = i32::try_from(max_attempts).unwrap_or(i32::MAX);
        // A hand-back (no grace) gives the attempt back.
        let refund: i32 = if grace.is_none() { 1 } else { 0 };
        self.with(move |mut c| async move {
            let tx = c.transaction().await.map_err(pg("requeueing a build"))?;
            let Some(row) = tx
                .query_opt(
                    "SELECT record, attempts, holder FROM api_builds
                     WHERE id = $1 AND worker = $2 AND status = 'building'
                       AND ($3::FLOAT8 IS NULL OR lease_expires_at < now() - make_interval(secs => $3))
                     FOR UPDATE",
                    &[&id, &worker, &grace.map(seconds)],
                )
                .await
                .map_err(pg("requeueing a build"))?
            else {
                return Ok(Requeue::Unchanged);
            };
            let text: String = row.get(0);
            let attempts: i32 = row.get(1);
            let holder: Option<String> = row.get(2);
            if attempts - refund >= max_attempts || holder.is_some() {
                return Ok(Requeue::Exhausted);
            }
            let mut record: BuildRecord = decode("build record", &text)?;
            record.requeued();
            tx.execute(
                "UPDATE api_builds SET status = 'waiting', record = $2, worker = NULL,
                   lease_expires_at = NULL, attempts = attempts - $3
                 WHERE id = $1",
                &[&id, &encode("build record", &record)?, &refund],
            )
            .await
            .map_err(pg("requeueing a build"))?;
            insert_entry(&tx, &id, &entry).await?;
            tx.commit().await.map_err(pg("requeueing a build"))?;
            Ok(Requeue::Requeued)
        })
    }

    fn queue_depth(&self) -> Result<QueueDepth, StoreError> {
        self.with(move |c| async move {
            let row = c
                .query_one(
                    "SELECT count(*) FILTER (WHERE status = 'waiting'), count(*) FILTER (WHERE status = 'building')
                     FROM api_builds WHERE status IN ('waiting', 'building')",
                    &[],
                )
                .await
                .map_err(pg("counting the queue"))?;
            Ok(QueueDepth {
                waiting: u64::try_from(row.get::<_, i64>(0)).unwrap_or(0),
                building: u64::try_from(row.get::<_, i64>(1)).unwrap_or(0),
            })
        })
    }

    fn is_shared(&self) -> bool {
        true
    }

    fn ping(&self) -> Result<(), StoreError> {
        self.with(move |c| async move {
            c.query_one("SELECT 1", &[])
                .await
                .map_err(pg("answering a ping"))?;
            Ok(())
        })
    }

    fn finish(&self, id: &str, finish: &Finish, entries: &[LogEntry]) -> Result<bool, StoreError> {
        let (id, finish, entries) = (id.to_string(), finish.clone(), entries.to_vec());
        self.with(move |mut c| async move {
            let tx = c.transaction().await.map_err(pg("ending a build"))?;
            // The row lock orders this against a cancel, a claim or a lease takeover.
            let Some(row) = tx
                .query_opt(
                    "SELECT record, worker FROM api_builds WHERE id = $1 FOR UPDATE",
                    &[&id],
                )
                .await
                .map_err(pg("ending a build"))?
            else {
                return Ok(false);
            };
            let text: String = row.get(0);
            let holder: Option<String> = row.get(1);
            if finish.worker.is_some() && finish.worker != holder {
                return Ok(false);
            }
            let mut record: BuildRecord = decode("build record", &text)?;
            if record.status.is_terminal() {
                // This worker's own end, recorded before an acknowledgement was lost.
                return Ok(finish.worker.is_some() && record.status == finish.status);
            }
            finish.apply(&mut record);
            tx.execute(
                "UPDATE api_builds SET status = $2, record = $3, lease_expires_at = NULL WHERE id = $1",
                &[&id, &finish.status.as_str(), &encode("build record", &record)?],
            )
            .await
            .map_err(pg("ending a build"))?;
            if finish.status == BuildStatus::Ready && finish.result.is_some() {
                for tag in &record.tags {
                    tx.execute(
                        "INSERT INTO tags (template_id, tag, build_id) VALUES ($1, $2, $3)
                         ON CONFLICT (template_id, tag) DO UPDATE SET build_id = excluded.build_id",
                        &[&record.template_id, tag, &id],
                    )
                    .await
                    .map_err(pg("publishing tags"))?;
                }
            }
            for entry in &entries {
                insert_entry(&tx, &id, entry).await?;
            }
            tx.commit().await.map_err(pg("ending a build"))?;
            Ok(true)
        })
    }

    fn append_entry(&self, id: &str, entry: &LogEntry) -> Result<Option<u64>, StoreError> {
        let (id, entry) = (id.to_string(), entry.clone());
        self.with(move |mut c| async move {
            let tx = c.transaction().await.map_err(pg("appending a log entry"))?;
            let status: Option<String> = tx
                .query_opt(
                    "SELECT status FROM api_builds WHERE id = $1 FOR UPDATE",
                    &[&id],
                )
                .await
                .map_err(pg("appending a log entry"))?
                .map(|row| row.get(0));
            let ended = |s: &String| {
                s.parse::<BuildStatus>()
                    .map_or(true, BuildStatus::is_terminal)
            };
            if status.as_ref().is_none_or(ended) {
                return Ok(None);
            }
            let offset = insert_entry(&tx, &id, &entry).await?;
            tx.commit().await.map_err(pg("appending a log entry"))?;
            Ok(Some(offset))
        })
    }

    fn entries(&self, id: &str, offset: u64, limit: usize) -> Result<Vec<LogEntry>, StoreError> {
        let id = id.to_string();
        let offset = i64::try_from(offset).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let texts: Vec<String> = self.with(move |c| async move {
            let rows = c
                .query(
                    "SELECT entry FROM api_log_entries WHERE build_id = $1 AND entry_offset >= $2
                     ORDER BY entry_offset LIMIT $3",
                    &[&id, &offset, &limit],
                )
                .await
                .map_err(pg("reading log entries"))?;
            Ok(rows.iter().map(|row| row.get(0)).collect())
        })?;
        texts.iter().map(|t| decode("log entry", t)).collect()
    }

    fn entry_count(&self, id: &str) -> Result<u64, StoreError> {
        let id = id.to_string();
        self.with(move |c| async move {
            let row = c
                .query_one(
                    "SELECT COALESCE(MAX(entry_offset) + 1, 0) FROM api_log_entries WHERE build_id = $1",
                    &[&id],
                )
                .await
                .map_err(pg("counting log entries"))?;
            Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
        })
    }

    fn history(
        &self,
        owner: &str,
        template_id: &str,
        filter: &HistoryFilter,
    ) -> Result<Vec<(i64, BuildRecord)>, StoreError> {
        let (owner, template_id) = (owner.to_string(), template_id.to_string());
        let status = filter.status.map(|s| s.as_str().to_string());
        let backend = filter.backend.map(|b| b.as_str().to_string());
        let before = filter.before;
        let limit = i64::try_from(filter.limit).unwrap_or(i64::MAX);
        let rows: Vec<(i64, String)> = self.with(move |c| async move {
            let rows = c
                .query(
                    "SELECT seq, record FROM api_builds
                     WHERE owner = $1 AND template_id = $2
                       AND ($3::TEXT IS NULL OR status = $3) AND ($4::TEXT IS NULL OR backend = $4)
                       AND ($5::BIGINT IS NULL OR seq < $5)
                     ORDER BY seq DESC LIMIT $6",
                    &[&owner, &template_id, &status, &backend, &before, &limit],
                )
                .await
                .map_err(pg("listing builds"))?;
            Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
        })?;
        rows.into_iter()
            .map(|(seq, text)| Ok((seq, decode("build record", &text)?)))
            .collect()
    }

    fn template(&self, owner: &str, id_or_name: &str) -> Result<Option<TemplateRow>, StoreError> {
        Ok(super::pick_template(self.templates_of(owner)?, id_or_name))
    }

    fn templates(&self, owner: &str) -> Result<Vec<TemplateRow>, StoreError> {
        self.templates_of(owner)
    }

    fn set_tag(&self, template_id: &str, tag: &str, build_id: &str) -> Result<(), StoreError> {
        let (template_id, tag, build_id) = (
            template_id.to_string(),
            tag.to_string(),
            build_id.to_string(),
        );
        self.with(move |mut c| async move {
            let tx = c.transaction().await.map_err(pg("setting a tag"))?;
            // As on SQLite: a tag of a build that does not exist is not set.
            if tx
                .query_opt("SELECT 1 FROM api_builds WHERE id = $1", &[&build_id])
                .await
                .map_err(pg("setting a tag"))?
                .is_none()
            {
                return Ok(());
            }
            tx.execute(
                "INSERT INTO tags (template_id, tag, build_id) VALUES ($1, $2, $3)
                 ON CONFLICT (template_id, tag) DO UPDATE SET build_id = excluded.build_id",
                &[&template_id, &tag, &build_id],
            )
            .await
            .map_err(pg("setting a tag"))?;
            PgStore::retag_record(&tx, &build_id, &tag, true).await?;
            tx.commit().await.map_err(pg("setting a tag"))
        })
    }

    fn active_builds(&self, owner: &str) -> Result<u64, StoreError> {
        let owner = owner.to_string();
        self.with(move |c| async move {
            let row = c
                .query_one(
                    "SELECT count(*) FROM api_builds WHERE owner = $1 AND status IN ('waiting', 'building')",
                    &[&owner],
                )
                .await
                .map_err(pg("counting builds"))?;
            Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
        })
    }

    fn builds_in(&self, status: BuildStatus) -> Result<Vec<String>, StoreError> {
        let status = status.as_str().to_string();
        self.with(move |c| async move {
            let rows = c
                .query(
                    "SELECT id FROM api_builds WHERE status = $1 ORDER BY seq",
                    &[&status],
                )
                .await
                .map_err(pg("listing builds"))?;
            Ok(rows.iter().map(|row| row.get(0)).collect())
        })
    }

    fn remove_tag(&self, template_id: &str, tag: &str) -> Result<bool, StoreError> {
        let (template_id, tag) = (template_id.to_string(), tag.to_string());
        self.with(move |mut c| async move {
            let tx = c.transaction().await.map_err(pg("removing a tag"))?;
            let Some(row) = tx
                .query_opt(
                    "DELETE FROM tags WHERE template_id = $1 AND tag = $2 RETURNING build_id",
                    &[&template_id, &tag],
                )
                .await
                .map_err(pg("removing a tag"))?
            else {
                return Ok(false);
            };
            let build_id: String = row.get(0);
            PgStore::retag_record(&tx, &build_id, &tag, false).await?;
            tx.commit().await.map_err(pg("removing a tag"))?;
            Ok(true)
        })
    }

    fn rename_template(
        &self,
        owner: &str,
        template_id: &str,
        new_name: &str,
    ) -> Result<(), StoreError> {
        let (owner, template_id, new_name) = (
            owner.to_string(),
            template_id.to_string(),
            new_name.to_string(),
        );
        self.with(move |mut c| async move {
            let tx = c.transaction().await.map_err(pg("renaming a template"))?;
            lock_namespace(&tx, &owner).await?;
            if let Some(why) = name_claim(&tx, &owner, &new_name).await? {
                return Err(StoreError::NameTaken(why));
            }
            tx.execute(
                "UPDATE templates SET name = $3 WHERE namespace = $1 AND id = $2",
                &[&owner, &template_id, &new_name],
            )
            .await
            .map_err(pg("renaming a template"))?;
            tx.commit().await.map_err(pg("renaming a template"))
        })
    }

    fn add_alias(&self, owner: &str, template_id: &str, alias: &str) -> Result<(), StoreError> {
        let (owner, template_id, alias) = (
            owner.to_string(),
            template_id.to_string(),
            alias.to_string(),
        );
        self.with(move |mut c| async move {
            let tx = c.transaction().await.map_err(pg("adding an alias"))?;
            lock_namespace(&tx, &owner).await?;
            if let Some(why) = name_claim(&tx, &owner, &alias).await? {
                return Err(StoreError::NameTaken(why));
            }
            tx.execute(
                "INSERT INTO template_aliases (namespace, alias, template_id) VALUES ($1, $2, $3)",
                &[&owner, &alias, &template_id],
            )
            .await
            .map_err(pg("adding an alias"))?;
            tx.commit().await.map_err(pg("adding an alias"))
        })
    }

    fn remove_alias(
        &self,
        owner: &str,
        template_id: &str,
        alias: &str,
    ) -> Result<bool, StoreError> {
        let (owner, template_id, alias) = (
            owner.to_string(),
            template_id.to_string(),
            alias.to_string(),
        );
        self.with(move |c| async move {
            let removed = c
                .execute(
                    "DELETE FROM template_aliases WHERE namespace = $1 AND template_id = $2 AND alias = $3",
                    &[&owner, &template_id, &alias],
                )
                .await
                .map_err(pg("removing an alias"))?;
            Ok(removed > 0)
        })
    }

    fn put_sandbox(&self, record: &SandboxInfo, owner: &str, host: &str) -> Result<(), StoreError> {
        let text = encode("sandbox", record)?;
        let (record, owner, host) = (record.clone(), owner.to_string(), host.to_string());
        self.with(move |c| async move {
            c.execute(
                "INSERT INTO sandboxes (id, owner, host, created_at, ended_at, record) VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (id) DO UPDATE SET ended_at = excluded.ended_at, record = excluded.record
                 WHERE sandboxes.ended_at IS NULL",
                &[&record.sandbox_id, &owner, &host, &record.created_at, &record.ended_at, &text],
            )
            .await
            .map_err(pg("recording a sandbox"))?;
            Ok(())
        })
    }

    fn sandbox(&self, owner: &str, id: &str) -> Result<Option<SandboxInfo>, StoreError> {
        let (owner, id) = (owner.to_string(), id.to_string());
        let text: Option<String> = self.with(move |c| async move {
            Ok(c.query_opt(
                "SELECT record FROM sandboxes WHERE id = $1 AND owner = $2",
                &[&id, &owner],
            )
            .await
            .map_err(pg("reading a sandbox"))?
            .map(|row| row.get(0)))
        })?;
        text.map(|t| decode("sandbox", &t)).transpose()
    }

    fn sandboxes(&self, owner: &str, limit: usize) -> Result<Vec<SandboxInfo>, StoreError> {
        let owner = owner.to_string();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let texts: Vec<String> = self.with(move |c| async move {
            let rows = c
                .query(
                    "SELECT record FROM sandboxes WHERE owner = $1 ORDER BY created_at DESC, id LIMIT $2",
                    &[&owner, &limit],
                )
                .await
                .map_err(pg("listing sandboxes"))?;
            Ok(rows.iter().map(|row| row.get(0)).collect())
        })?;
        texts.iter().map(|t| decode("sandbox", t)).collect()
    }

    fn running_sandboxes(&self, host: &str) -> Result<Vec<(String, SandboxInfo)>, StoreError> {
        let wanted = host.to_string();
        self.with(move |c| async move {
            let rows = c
                .query(
                    "SELECT owner, record FROM sandboxes WHERE ended_at IS NULL AND host = $1",
                    &[&wanted],
                )
                .await
                .map_err(pg("listing running sandboxes"))?;
            rows.iter()
                .map(|row| Ok((row.get(0), decode("sandbox", row.get::<_, &str>(1))?)))
                .collect()
        })
    }
}
