//! [`BuildStore`] on the data dir's SQLite database.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde::Serialize;

use nullspace_api::{BuildBackend, BuildStatus};

use crate::entry::LogEntry;

use super::{
    entry_json, BuildRecord, BuildStore, ExpiredLease, Finish, HistoryFilter, QueueDepth, Queueing,
    Requeue, StoreError, TemplateRow,
};

/// Milliseconds since the epoch (one host: the lease clock is this machine's).
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn millis(duration: std::time::Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// [`BuildStore`] on SQLite.
pub struct SqliteStore {
    path: PathBuf,
    connection: Mutex<Connection>,
}

impl SqliteStore {
    /// Opens the database at `path` (the data dir's `nullspace.db`), bringing its schema up to
    /// date.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let err = |source| StoreError::Database {
            path: path.to_path_buf(),
            source,
        };
        let mut connection = nullspace_build::store::open_connection(path).map_err(err)?;
        nullspace_build::store::schema::migrate(&mut connection).map_err(|message| {
            StoreError::Migration {
                path: path.to_path_buf(),
                message,
            }
        })?;
        Ok(SqliteStore {
            path: path.to_path_buf(),
            connection: Mutex::new(connection),
        })
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        let mut guard = self.connection.lock().map_err(|_| StoreError::Poisoned)?;
        f(&mut guard).map_err(|source| StoreError::Database {
            path: self.path.clone(),
            source,
        })
    }

    fn decode<T: serde::de::DeserializeOwned>(
        &self,
        what: &'static str,
        text: &str,
    ) -> Result<T, StoreError> {
        serde_json::from_str(text).map_err(|source| StoreError::Corrupt {
            path: self.path.clone(),
            what,
            source,
        })
    }

    fn encode<T: Serialize>(&self, what: &'static str, value: &T) -> Result<String, StoreError> {
        serde_json::to_string(value).map_err(|source| StoreError::Corrupt {
            path: self.path.clone(),
            what,
            source,
        })
    }
}

fn insert_entry(tx: &Connection, id: &str, entry: &LogEntry) -> rusqlite::Result<u64> {
    let template_id: String = tx.query_row(
        "SELECT template_id FROM api_builds WHERE id = ?1",
        params![id],
        |r| r.get(0),
    )?;
    let next: i64 = tx.query_row(
        "SELECT COALESCE(MAX(offset) + 1, 0) FROM api_log_entries WHERE build_id = ?1",
        params![id],
        |r| r.get(0),
    )?;
    let offset = u64::try_from(next).unwrap_or(0);
    tx.execute(
        "INSERT INTO api_log_entries (build_id, offset, entry) VALUES (?1, ?2, ?3)",
        params![id, next, entry_json(entry, id, &template_id, offset)],
    )?;
    Ok(offset)
}

impl BuildStore for SqliteStore {
    fn ensure_template(
        &self,
        owner: &str,
        name: &str,
        new_id: &str,
        now: &str,
    ) -> Result<String, StoreError> {
        self.with(|c| nullspace_build::store::ensure_template_row(c, owner, name, new_id, now))
    }

    fn insert_build(
        &self,
        record: &BuildRecord,
        queueing: &Queueing,
        first: &LogEntry,
    ) -> Result<(), StoreError> {
        let json = self.encode("build record", record)?;
        self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute(
                "INSERT INTO api_builds (id, owner, template_id, status, backend, record, holder, wait_for)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    record.id,
                    record.owner,
                    record.template_id,
                    record.status.as_str(),
                    record.definition.build_backend.as_str(),
                    json,
                    queueing.holder,
                    queueing.wait_for
                ],
            )?;
            insert_entry(&tx, &record.id, first)?;
            tx.commit()
        })
    }

    fn build(&self, owner: Option<&str>, id: &str) -> Result<Option<BuildRecord>, StoreError> {
        let row: Option<(String, String)> = self.with(|c| {
            c.query_row(
                "SELECT owner, record FROM api_builds WHERE id = ?1",
                params![id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
        })?;
        match row {
            Some((row_owner, json)) if owner.is_none_or(|o| o == row_owner) => {
                Ok(Some(self.decode("build record", &json)?))
            }
            _ => Ok(None),
        }
    }

    fn claim_next(
        &self,
        worker: &str,
        lease: std::time::Duration,
        now: &str,
        entry: &LogEntry,
    ) -> Result<Option<BuildRecord>, StoreError> {
        let mut failure: Option<StoreError> = None;
        let claimed = self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            // The oldest claimable build this process can read (see the PostgreSQL store),
            // records decoded one at a time.
            let readable = {
                let mut statement = tx.prepare(
                    "SELECT b.id, b.record FROM api_builds b
                     WHERE b.status = 'waiting' AND (b.holder IS NULL OR b.holder = ?1)
                       AND (b.wait_for IS NULL OR NOT EXISTS (
                         SELECT 1 FROM api_builds d WHERE d.id = b.wait_for AND d.status IN ('waiting', 'building')))
                     ORDER BY b.seq LIMIT ?2",
                )?;
                let mut rows = statement
                    .query(params![worker, super::UNREADABLE_RECORDS_PASSED as i64 + 1])?;
                let mut readable = None;
                while let Some(row) = rows.next()? {
                    let id: String = row.get(0)?;
                    let json: String = row.get(1)?;
                    match self.decode::<BuildRecord>("build record", &json) {
                        Ok(record) => {
                            readable = Some((id, record));
                            break;
                        }
                        Err(error) => super::pass_over_unreadable(&id, &error),
                    }
                }
                readable
            };
            let Some((id, mut record)) = readable else {
                return Ok(None);
            };
            record.claimed(now);
            let json = match self.encode("build record", &record) {
                Ok(json) => json,
                Err(error) => {
                    failure = Some(error);
                    return Ok(None);
                }
            };
            tx.execute(
                "UPDATE api_builds SET status = 'building', record = ?2, worker = ?3,
                   lease_expires_ms = ?4, attempts = attempts + 1 WHERE id = ?1",
                params![id, json, worker, now_ms().saturating_add(millis(lease))],
            )?;
            insert_entry(&tx, &id, entry)?;
            tx.commit()?;
            Ok(Some(record))
        })?;
        match failure {
            Some(error) => Err(error),
            None => Ok(claimed),
        }
    }

    fn renew_lease(
        &self,
        id: &str,
        worker: &str,
        lease: std::time::Duration,
    ) -> Result<bool, StoreError> {
        self.with(|c| {
            c.execute(
                "UPDATE api_builds SET lease_expires_ms = ?3
                 WHERE id = ?1 AND worker = ?2 AND status = 'building'",
                params![id, worker, now_ms().saturating_add(millis(lease))],
            )
        })
        .map(|n| n == 1)
    }

    fn expired_leases(&self, grace: std::time::Duration) -> Result<Vec<ExpiredLease>, StoreError> {
        self.with(|c| {
            let mut statement = c.prepare(
                "SELECT id, worker, attempts FROM api_builds
                 WHERE status = 'building' AND worker IS NOT NULL AND lease_expires_ms < ?1
                 ORDER BY seq",
            )?;
            let rows = statement
                .query_map(params![now_ms().saturating_sub(millis(grace))], |r| {
                    Ok(ExpiredLease {
                        id: r.get(0)?,
                        worker: r.get(1)?,
                        attempts: u32::try_from(r.get::<_, i64>(2)?).unwrap_or(u32::MAX),
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
    }

    fn requeue(
        &self,
        id: &str,
        worker: &str,
        grace: Option<std::time::Duration>,
        max_attempts: u32,
        entry: &LogEntry,
    ) -> Result<Requeue, StoreError> {
        let Some(mut record) = self.build(None, id)? else {
            return Ok(Requeue::Unchanged);
        };
        record.requeued();
        let json = self.encode("build record", &record)?;
        // A hand-back (no grace) gives the attempt back.
        let (deadline, refund) = match grace {
            Some(grace) => (now_ms().saturating_sub(millis(grace)), 0),
            None => (i64::MAX, 1),
        };
        self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let held: Option<(i64, Option<String>)> = tx
                .query_row(
                    "SELECT attempts, holder FROM api_builds
                     WHERE id = ?1 AND worker = ?2 AND status = 'building' AND lease_expires_ms < ?3",
                    params![id, worker, deadline],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            let Some((attempts, holder)) = held else {
                return Ok(Requeue::Unchanged);
            };
            if attempts - refund >= i64::from(max_attempts) || holder.is_some() {
                return Ok(Requeue::Exhausted);
            }
            tx.execute(
                "UPDATE api_builds SET status = 'waiting', record = ?2, worker = NULL,
                   lease_expires_ms = NULL, attempts = attempts - ?3
                 WHERE id = ?1",
                params![id, json, refund],
            )?;
            insert_entry(&tx, id, entry)?;
            tx.commit()?;
            Ok(Requeue::Requeued)
        })
    }

    /// One server uses a SQLite database (it locks its data dir's sandboxes dir), so the holder of any held
    /// build is this process: nothing to record. A held build left by an earlier process is
    /// ended when the next one starts ([`crate::runner::Runner::recover`]).
    fn heartbeat(&self, _instance: &str) -> Result<(), StoreError> {
        Ok(())
    }

    /// None: see [`SqliteStore::heartbeat`].
    fn orphaned_held_builds(
        &self,
        _silent_for: std::time::Duration,
    ) -> Result<Vec<String>, StoreError> {
        Ok(Vec::new())
    }

    fn queue_depth(&self) -> Result<QueueDepth, StoreError> {
        self.with(|c| {
            c.query_row(
                "SELECT COALESCE(SUM(status = 'waiting'), 0), COALESCE(SUM(status = 'building'), 0)
                 FROM api_builds WHERE status IN ('waiting', 'building')",
                [],
                |r| {
                    Ok(QueueDepth {
                        waiting: u64::try_from(r.get::<_, i64>(0)?).unwrap_or(0),
                        building: u64::try_from(r.get::<_, i64>(1)?).unwrap_or(0),
                    })
                },
            )
        })
    }

    fn is_shared(&self) -> bool {
        false
    }

    fn ping(&self) -> Result<(), StoreError> {
        self.with(|c| c.query_row("SELECT 1", [], |_| Ok(())))
    }

    fn finish(&self, id: &str, finish: &Finish, entries: &[LogEntry]) -> Result<bool, StoreError> {
        // Read, check and write in one immediate transaction: a cancel racing the start or the
        // end of a build sees the status the other one wrote, never an older one.
        let mut failure: Option<StoreError> = None;
        let changed = self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let row: Option<(String, Option<String>)> = tx
                .query_row(
                    "SELECT record, worker FROM api_builds WHERE id = ?1",
                    params![id],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            let Some((json, holder)) = row else {
                return Ok(false);
            };
            if finish.worker.is_some() && finish.worker != holder {
                return Ok(false);
            }
            let mut record: BuildRecord = match self.decode("build record", &json) {
                Ok(record) => record,
                Err(error) => {
                    failure = Some(error);
                    return Ok(false);
                }
            };
            if record.status.is_terminal() {
                // This worker's own end, recorded before an acknowledgement was lost.
                return Ok(finish.worker.is_some() && record.status == finish.status);
            }
            finish.apply(&mut record);
            let json = match self.encode("build record", &record) {
                Ok(json) => json,
                Err(error) => {
                    failure = Some(error);
                    return Ok(false);
                }
            };
            tx.execute(
                "UPDATE api_builds SET status = ?2, record = ?3 WHERE id = ?1",
                params![id, finish.status.as_str(), json],
            )?;
            if let (BuildStatus::Ready, Some(result)) = (finish.status, &finish.result) {
                nullspace_build::store::publish_rows(
                    &tx,
                    id,
                    &record.template_id,
                    &record.tags,
                    &result.artifact_dir,
                    &finish.finished_at,
                )?;
            }
            for entry in entries {
                insert_entry(&tx, id, entry)?;
            }
            tx.commit()?;
            Ok(true)
        })?;
        match failure {
            Some(error) => Err(error),
            None => Ok(changed),
        }
    }

    fn append_entry(&self, id: &str, entry: &LogEntry) -> Result<Option<u64>, StoreError> {
        self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let active: Option<String> = tx
                .query_row(
                    "SELECT status FROM api_builds WHERE id = ?1",
                    params![id],
                    |r| r.get(0),
                )
                .optional()?;
            let ended = |s: &String| {
                s.parse::<BuildStatus>()
                    .map_or(true, BuildStatus::is_terminal)
            };
            if active.as_ref().is_none_or(ended) {
                return Ok(None);
            }
            let offset = insert_entry(&tx, id, entry)?;
            tx.commit()?;
            Ok(Some(offset))
        })
    }

    fn entries(&self, id: &str, offset: u64, limit: usize) -> Result<Vec<LogEntry>, StoreError> {
        let offset = i64::try_from(offset).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows: Vec<String> = self.with(|c| {
            let mut statement = c.prepare(
                "SELECT entry FROM api_log_entries WHERE build_id = ?1 AND offset >= ?2 ORDER BY offset LIMIT ?3",
            )?;
            let rows = statement
                .query_map(params![id, offset, limit], |r| r.get(0))?
                .collect::<rusqlite::Result<Vec<String>>>()?;
            Ok(rows)
        })?;
        rows.iter()
            .map(|json| self.decode("log entry", json))
            .collect()
    }

    fn entry_count(&self, id: &str) -> Result<u64, StoreError> {
        let count: i64 = self.with(|c| {
            c.query_row(
                "SELECT COALESCE(MAX(offset) + 1, 0) FROM api_log_entries WHERE build_id = ?1",
                params![id],
                |r| r.get(0),
            )
        })?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    fn history(
        &self,
        owner: &str,
        template_id: &str,
        filter: &HistoryFilter,
    ) -> Result<Vec<(i64, BuildRecord)>, StoreError> {
        let limit = i64::try_from(filter.limit).unwrap_or(i64::MAX);
        let rows: Vec<(i64, String)> = self.with(|c| {
            let mut statement = c.prepare(
                "SELECT seq, record FROM api_builds
                 WHERE owner = ?1 AND template_id = ?2
                   AND (?3 IS NULL OR status = ?3) AND (?4 IS NULL OR backend = ?4)
                   AND (?5 IS NULL OR seq < ?5)
                 ORDER BY seq DESC LIMIT ?6",
            )?;
            let rows = statement
                .query_map(
                    params![
                        owner,
                        template_id,
                        filter.status.map(BuildStatus::as_str),
                        filter.backend.map(BuildBackend::as_str),
                        filter.before,
                        limit
                    ],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })?;
        rows.into_iter()
            .map(|(seq, json)| Ok((seq, self.decode("build record", &json)?)))
            .collect()
    }

    fn template(&self, owner: &str, id_or_name: &str) -> Result<Option<TemplateRow>, StoreError> {
        Ok(super::pick_template(self.templates(owner)?, id_or_name))
    }

    fn templates(&self, owner: &str) -> Result<Vec<TemplateRow>, StoreError> {
        let rows = self.with(|c| nullspace_build::store::template_tag_rows(c, owner))?;
        let mut out: Vec<TemplateRow> = Vec::new();
        for (id, name, tag, build) in rows {
            if out.last().is_none_or(|last| last.id != id) {
                out.push(TemplateRow {
                    id: id.clone(),
                    namespace: owner.to_string(),
                    name,
                    tags: Vec::new(),
                    aliases: Vec::new(),
                });
            }
            if let (Some(tag), Some(build), Some(last)) = (tag, build, out.last_mut()) {
                last.tags.push((tag, build));
            }
        }
        let aliases = self.with(|c| nullspace_build::store::alias_rows(c, owner))?;
        for (template_id, alias) in aliases {
            if let Some(row) = out.iter_mut().find(|t| t.id == template_id) {
                row.aliases.push(alias);
            }
        }
        Ok(out)
    }

    fn set_tag(&self, template_id: &str, tag: &str, build_id: &str) -> Result<(), StoreError> {
        let Some(mut record) = self.build(None, build_id)? else {
            return Ok(());
        };
        if !record.tags.iter().any(|t| t == tag) {
            record.tags.push(tag.to_string());
        }
        record.updated_at = nullspace_build::ids::now_rfc3339();
        let json = self.encode("build record", &record)?;
        self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            nullspace_build::store::set_tag_row(&tx, template_id, tag, build_id)?;
            tx.execute(
                "UPDATE api_builds SET record = ?2 WHERE id = ?1",
                params![build_id, json],
            )?;
            tx.commit()
        })
    }

    fn remove_tag(&self, template_id: &str, tag: &str) -> Result<bool, StoreError> {
        let build_id = self.with(|c| nullspace_build::store::tag_target(c, template_id, tag))?;
        let Some(build_id) = build_id else {
            return Ok(false);
        };
        let record = self.build(None, &build_id)?;
        let json = match record {
            Some(mut record) => {
                record.tags.retain(|t| t != tag);
                record.updated_at = nullspace_build::ids::now_rfc3339();
                Some(self.encode("build record", &record)?)
            }
            None => None,
        };
        self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            nullspace_build::store::remove_tag_row(&tx, template_id, tag)?;
            if let Some(json) = &json {
                tx.execute(
                    "UPDATE api_builds SET record = ?2 WHERE id = ?1",
                    params![build_id, json],
                )?;
            }
            tx.commit()
        })?;
        Ok(true)
    }

    fn rename_template(
        &self,
        owner: &str,
        template_id: &str,
        new_name: &str,
    ) -> Result<(), StoreError> {
        self.with(|c| nullspace_build::store::rename_template_row(c, owner, template_id, new_name))?
            .map_err(StoreError::NameTaken)
    }

    fn add_alias(&self, owner: &str, template_id: &str, alias: &str) -> Result<(), StoreError> {
        self.with(|c| nullspace_build::store::add_alias_row(c, owner, template_id, alias))?
            .map_err(StoreError::NameTaken)
    }

    fn remove_alias(
        &self,
        owner: &str,
        template_id: &str,
        alias: &str,
    ) -> Result<bool, StoreError> {
        self.with(|c| nullspace_build::store::remove_alias_row(c, owner, template_id, alias))
    }

    fn put_sandbox(
        &self,
        record: &nullspace_api::sandbox::SandboxInfo,
        owner: &str,
        host: &str,
    ) -> Result<(), StoreError> {
        let text = self.encode("sandbox", record)?;
        self.with(|c| {
            c.execute(
                "INSERT INTO sandboxes (id, owner, created_at, ended_at, record, host) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (id) DO UPDATE SET ended_at = excluded.ended_at, record = excluded.record
                 WHERE sandboxes.ended_at IS NULL",
                params![record.sandbox_id, owner, record.created_at, record.ended_at, text, host],
            )
        })?;
        Ok(())
    }

    fn sandbox(
        &self,
        owner: &str,
        id: &str,
    ) -> Result<Option<nullspace_api::sandbox::SandboxInfo>, StoreError> {
        let text: Option<String> = self.with(|c| {
            c.query_row(
                "SELECT record FROM sandboxes WHERE id = ?1 AND owner = ?2",
                params![id, owner],
                |r| r.get(0),
            )
            .optional()
        })?;
        text.map(|t| self.decode("sandbox", &t)).transpose()
    }

    fn sandboxes(
        &self,
        owner: &str,
        limit: usize,
    ) -> Result<Vec<nullspace_api::sandbox::SandboxInfo>, StoreError> {
        let texts: Vec<String> = self.with(|c| {
            let mut statement = c.prepare(
                "SELECT record FROM sandboxes WHERE owner = ?1 ORDER BY created_at DESC, id LIMIT ?2",
            )?;
            let rows = statement.query_map(params![owner, limit as i64], |r| r.get(0))?;
            rows.collect()
        })?;
        texts.iter().map(|t| self.decode("sandbox", t)).collect()
    }

    fn running_sandboxes(
        &self,
        host: &str,
    ) -> Result<Vec<(String, nullspace_api::sandbox::SandboxInfo)>, StoreError> {
        // One host per database: every running record is this host's, whatever it was called.
        let _ = host;
        let running: Vec<(String, String)> = self.with(|c| {
            let mut statement =
                c.prepare("SELECT owner, record FROM sandboxes WHERE ended_at IS NULL")?;
            let rows = statement.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect()
        })?;
        running
            .into_iter()
            .map(|(owner, text)| Ok((owner, self.decode("sandbox", &text)?)))
            .collect()
    }

    fn active_builds(&self, owner: &str) -> Result<u64, StoreError> {
        self.with(|c| {
            c.query_row(
                "SELECT COUNT(*) FROM api_builds WHERE owner = ?1 AND status IN ('waiting', 'building')",
                params![owner],
                |r| r.get::<_, i64>(0),
            )
        })
        .map(|n| u64::try_from(n).unwrap_or(0))
    }

    fn builds_in(&self, wanted: BuildStatus) -> Result<Vec<String>, StoreError> {
        self.with(|c| {
            let mut statement =
                c.prepare("SELECT id FROM api_builds WHERE status = ?1 ORDER BY seq")?;
            let rows = statement
                .query_map(params![wanted.as_str()], |r| r.get(0))?
                .collect::<rusqlite::Result<Vec<String>>>()?;
            Ok(rows)
        })
    }
}
