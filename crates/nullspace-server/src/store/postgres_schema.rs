//! The PostgreSQL schema of [`super::PgStore`], as versioned migrations: the same tables as the
//! SQLite database (`nullspace_build::store::schema`) minus the engine's per-host ones (`builds`,
//! `blob_access`, which stay in each host's data dir), with the queue's lease columns and the
//! host that runs each sandbox. The version is kept in `nullspace_schema`; migrations run in one
//! transaction under an advisory lock, so processes starting together apply each step once.
//!
//! A change is a new entry at the end of [`MIGRATIONS`], never an edit of an old one.

/// The migrations, oldest first.
pub(super) const MIGRATIONS: &[&str] = &[
    "
CREATE TABLE templates (
    id TEXT PRIMARY KEY,
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    created_at TEXT NOT NULL,
    UNIQUE (namespace, name)
);
CREATE TABLE template_aliases (
    namespace TEXT NOT NULL,
    alias TEXT NOT NULL,
    template_id TEXT NOT NULL REFERENCES templates(id),
    PRIMARY KEY (namespace, alias)
);
CREATE TABLE api_builds (
    seq BIGSERIAL PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    owner TEXT NOT NULL,
    template_id TEXT NOT NULL REFERENCES templates(id),
    status TEXT NOT NULL,
    backend TEXT NOT NULL,
    record TEXT NOT NULL,
    worker TEXT,
    lease_expires_at TIMESTAMPTZ,
    attempts INTEGER NOT NULL DEFAULT 0,
    holder TEXT,
    wait_for TEXT
);
CREATE INDEX api_builds_template ON api_builds (template_id, seq);
CREATE INDEX api_builds_status ON api_builds (status, seq);
CREATE INDEX api_builds_owner_status ON api_builds (owner, status);
CREATE TABLE tags (
    template_id TEXT NOT NULL REFERENCES templates(id),
    tag TEXT NOT NULL,
    build_id TEXT NOT NULL REFERENCES api_builds(id),
    PRIMARY KEY (template_id, tag)
);
CREATE TABLE api_log_entries (
    build_id TEXT NOT NULL REFERENCES api_builds(id),
    entry_offset BIGINT NOT NULL,
    entry TEXT NOT NULL,
    PRIMARY KEY (build_id, entry_offset)
);
CREATE TABLE sandboxes (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    host TEXT NOT NULL,
    created_at TEXT NOT NULL,
    ended_at TEXT,
    record TEXT NOT NULL
);
CREATE INDEX sandboxes_by_owner ON sandboxes (owner, created_at);
CREATE INDEX sandboxes_running ON sandboxes (host) WHERE ended_at IS NULL;
",
    "
CREATE TABLE instances (
    name TEXT PRIMARY KEY,
    seen_at TIMESTAMPTZ NOT NULL
);
",
];

/// The advisory lock key that serialises migrations (any constant; "nullspace" in ASCII).
pub(super) const MIGRATION_LOCK: i64 = 0x6e75_6c6c_7370_6163;
