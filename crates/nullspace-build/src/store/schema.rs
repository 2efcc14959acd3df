//! The one schema of the data dir's database (`nullspace.db`), as versioned migrations
//! (`rusqlite_migration`, tracked in SQLite's `user_version`). Every process that opens the
//! database runs [`migrate`] first; no other module creates or alters a table.
//!
//! Who writes which table:
//! - `templates`, `tags`, `template_aliases`: [`super::rows`] (the engine's [`super::Store`]
//!   and the build service go through it);
//! - `builds`: the engine's [`super::Store`] (local builds and the engine's view of service
//!   builds);
//! - `api_builds`, `api_log_entries`: the build service's store (`nullspace-server`), the
//!   queue and the durable logs;
//! - `sandboxes`: the sandbox service's records (`nullspace-server`);
//! - `blob_access`: the engine's [`super::Store`]: which owner has itself fetched which layer
//!   blob from a registry (the shared blob store and rootfs cache serve an owner only those).
//!
//! A change to the schema is a new entry at the end of [`MIGRATIONS`], never an edit of an
//! old one: databases written by earlier versions are brought forward step by step.

use rusqlite::Connection;
use rusqlite_migration::{Migrations, M};

/// The migrations, oldest first. The first one uses `IF NOT EXISTS` because databases made
/// before migrations existed already have these tables (at `user_version` 0).
const MIGRATIONS: &[&str] = &[
    "
CREATE TABLE IF NOT EXISTS templates (
    id TEXT PRIMARY KEY,
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    created_at TEXT NOT NULL,
    UNIQUE (namespace, name)
);
CREATE TABLE IF NOT EXISTS builds (
    id TEXT PRIMARY KEY,
    template_id TEXT NOT NULL REFERENCES templates(id),
    status TEXT NOT NULL,
    backend TEXT NOT NULL,
    created_at TEXT NOT NULL,
    finished_at TEXT,
    artifact_dir TEXT,
    error TEXT
);
CREATE TABLE IF NOT EXISTS tags (
    template_id TEXT NOT NULL REFERENCES templates(id),
    tag TEXT NOT NULL,
    build_id TEXT NOT NULL REFERENCES builds(id),
    PRIMARY KEY (template_id, tag)
);
CREATE TABLE IF NOT EXISTS template_aliases (
    namespace TEXT NOT NULL,
    alias TEXT NOT NULL,
    template_id TEXT NOT NULL REFERENCES templates(id),
    PRIMARY KEY (namespace, alias)
);
CREATE TABLE IF NOT EXISTS api_builds (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    owner TEXT NOT NULL,
    template_id TEXT NOT NULL,
    status TEXT NOT NULL,
    backend TEXT NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS api_builds_template ON api_builds (template_id, seq);
CREATE INDEX IF NOT EXISTS api_builds_status ON api_builds (status, seq);
CREATE TABLE IF NOT EXISTS api_log_entries (
    build_id TEXT NOT NULL,
    offset INTEGER NOT NULL,
    entry TEXT NOT NULL,
    PRIMARY KEY (build_id, offset)
);
",
    "
CREATE TABLE blob_access (
    owner TEXT NOT NULL,
    digest TEXT NOT NULL,
    PRIMARY KEY (owner, digest)
);
",
    "
CREATE TABLE sandboxes (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    created_at TEXT NOT NULL,
    ended_at TEXT,
    record TEXT NOT NULL
);
CREATE INDEX sandboxes_by_owner ON sandboxes (owner, created_at);
",
    // The queue's leases (see nullspace-server's store): who runs a build until when, how many
    // attempts it had, who holds its request-time secrets, what it waits for; and the host that
    // runs a sandbox.
    "
ALTER TABLE api_builds ADD COLUMN worker TEXT;
ALTER TABLE api_builds ADD COLUMN lease_expires_ms INTEGER;
ALTER TABLE api_builds ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE api_builds ADD COLUMN holder TEXT;
ALTER TABLE api_builds ADD COLUMN wait_for TEXT;
ALTER TABLE sandboxes ADD COLUMN host TEXT NOT NULL DEFAULT '';
",
];

/// Brings the database on `connection` to the latest schema; the error says which step
/// failed and why.
pub fn migrate(connection: &mut Connection) -> Result<(), String> {
    let migrations = Migrations::new(MIGRATIONS.iter().map(|sql| M::up(sql)).collect());
    migrations
        .to_latest(connection)
        .map_err(|e| format!("migrating the schema: {e}"))
}

/// The schema version this code writes (the number of migrations).
pub fn latest_version() -> usize {
    MIGRATIONS.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_valid_and_idempotent() {
        let migrations = Migrations::new(MIGRATIONS.iter().map(|sql| M::up(sql)).collect());
        migrations.validate().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nullspace.db");
        let mut connection = Connection::open(&path).unwrap();
        // A database from before migrations: the tables exist, user_version is 0.
        connection.execute_batch(MIGRATIONS[0]).unwrap();
        migrate(&mut connection).unwrap();
        migrate(&mut connection).unwrap();
        let version: usize = connection
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, latest_version());
    }
}
