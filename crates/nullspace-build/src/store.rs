//! Durable records of templates, builds and tags (SQLite in the data dir).
//!
//! Publication is one transaction: the build's row turns `ready` and its tags move to it
//! together, so a reader sees either the old tag targets or the complete new template.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension};

use crate::error::BuildError;

/// The namespace of templates built on this machine.
pub const LOCAL_NAMESPACE: &str = "local";

const SCHEMA: &str = "
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
";

/// A published build a ref points at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedRef {
    /// Template id.
    pub template_id: String,
    /// Template name.
    pub name: String,
    /// Build id.
    pub build_id: String,
    /// The artifact dir.
    pub artifact_dir: PathBuf,
}

/// One template in a listing.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct TemplateSummary {
    /// Template id.
    pub id: String,
    /// Name.
    pub name: String,
    /// `namespace/name:tag` for its first tag.
    pub canonical_ref: String,
    /// Tags and the builds they point at.
    pub tags: Vec<(String, String)>,
}

/// Opens the data dir's SQLite database the way every user of it must: WAL (readers don't block
/// the writer), foreign keys on, and a busy timeout for concurrent writers.
pub fn open_connection(path: &Path) -> rusqlite::Result<Connection> {
    let connection = Connection::open(path)?;
    connection.pragma_update(None, "journal_mode", "WAL")?;
    connection.pragma_update(None, "foreign_keys", "ON")?;
    connection.busy_timeout(std::time::Duration::from_secs(10))?;
    Ok(connection)
}

/// Returns the id of template `namespace/name`, creating its row (with `new_id`) if needed.
/// Shared with the build service, whose namespaces are API key owners.
pub fn ensure_template_row(
    connection: &Connection,
    namespace: &str,
    name: &str,
    new_id: &str,
    now: &str,
) -> rusqlite::Result<String> {
    connection.execute(
        "INSERT OR IGNORE INTO templates (id, namespace, name, created_at) VALUES (?1, ?2, ?3, ?4)",
        params![new_id, namespace, name, now],
    )?;
    connection.query_row(
        "SELECT id FROM templates WHERE namespace = ?1 AND name = ?2",
        params![namespace, name],
        |row| row.get(0),
    )
}

/// Aliases: other names a template answers to in its namespace. Shared with the service.
pub const ALIASES_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS template_aliases (
    namespace TEXT NOT NULL,
    alias TEXT NOT NULL,
    template_id TEXT NOT NULL REFERENCES templates(id),
    PRIMARY KEY (namespace, alias)
);
";

/// What claims `name` in `namespace`: a template's name or an alias (as a message), if any.
fn name_claim(
    connection: &Connection,
    namespace: &str,
    name: &str,
) -> rusqlite::Result<Option<String>> {
    if let Some(id) = connection
        .query_row(
            "SELECT id FROM templates WHERE namespace = ?1 AND name = ?2",
            params![namespace, name],
            |r| r.get::<_, String>(0),
        )
        .optional()?
    {
        return Ok(Some(format!("{name:?} is the name of template {id}")));
    }
    Ok(connection
        .query_row(
            "SELECT template_id FROM template_aliases WHERE namespace = ?1 AND alias = ?2",
            params![namespace, name],
            |r| r.get::<_, String>(0),
        )
        .optional()?
        .map(|id| format!("{name:?} is an alias of template {id}")))
}

/// Renames template `template_id` of `namespace` to `new_name`, keeping its id, builds, tags
/// and aliases. `Ok(Err(why))` when the name is taken.
pub fn rename_template_row(
    connection: &mut Connection,
    namespace: &str,
    template_id: &str,
    new_name: &str,
) -> rusqlite::Result<Result<(), String>> {
    let tx = connection.transaction()?;
    if let Some(why) = name_claim(&tx, namespace, new_name)? {
        return Ok(Err(why));
    }
    tx.execute(
        "UPDATE templates SET name = ?3 WHERE namespace = ?1 AND id = ?2",
        params![namespace, template_id, new_name],
    )?;
    tx.commit()?;
    Ok(Ok(()))
}

/// Adds `alias` to template `template_id`. `Ok(Err(why))` when the alias is taken.
pub fn add_alias_row(
    connection: &mut Connection,
    namespace: &str,
    template_id: &str,
    alias: &str,
) -> rusqlite::Result<Result<(), String>> {
    let tx = connection.transaction()?;
    if let Some(why) = name_claim(&tx, namespace, alias)? {
        return Ok(Err(why));
    }
    tx.execute(
        "INSERT INTO template_aliases (namespace, alias, template_id) VALUES (?1, ?2, ?3)",
        params![namespace, alias, template_id],
    )?;
    tx.commit()?;
    Ok(Ok(()))
}

/// Removes `alias` of template `template_id`; false when it had no such alias.
pub fn remove_alias_row(
    connection: &Connection,
    namespace: &str,
    template_id: &str,
    alias: &str,
) -> rusqlite::Result<bool> {
    connection
        .execute(
            "DELETE FROM template_aliases WHERE namespace = ?1 AND template_id = ?2 AND alias = ?3",
            params![namespace, template_id, alias],
        )
        .map(|n| n > 0)
}

/// The aliases of every template of `namespace`, by template id.
pub fn alias_rows(
    connection: &Connection,
    namespace: &str,
) -> rusqlite::Result<Vec<(String, String)>> {
    let mut statement = connection.prepare(
        "SELECT template_id, alias FROM template_aliases WHERE namespace = ?1 ORDER BY alias",
    )?;
    let rows = statement
        .query_map(params![namespace], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect();
    rows
}

/// The SQLite store.
pub struct Store {
    path: PathBuf,
    connection: Mutex<Connection>,
}

impl Store {
    /// Opens (creating) the database at `path`.
    pub fn open(path: &Path) -> Result<Store, BuildError> {
        let err = |source| BuildError::Database {
            path: path.to_path_buf(),
            source,
        };
        let connection = open_connection(path).map_err(err)?;
        connection.execute_batch(SCHEMA).map_err(err)?;
        connection.execute_batch(ALIASES_SCHEMA).map_err(err)?;
        Ok(Store {
            path: path.to_path_buf(),
            connection: Mutex::new(connection),
        })
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>,
    ) -> Result<T, BuildError> {
        let mut guard = self
            .connection
            .lock()
            .map_err(|_| BuildError::Internal("database lock poisoned".into()))?;
        f(&mut guard).map_err(|source| BuildError::Database {
            path: self.path.clone(),
            source,
        })
    }

    /// Returns the id of template `name`, creating its row if needed.
    pub fn ensure_template(
        &self,
        name: &str,
        new_id: &str,
        now: &str,
    ) -> Result<String, BuildError> {
        self.with(|c| ensure_template_row(c, LOCAL_NAMESPACE, name, new_id, now))
    }

    /// Records a build as running.
    pub fn start_build(
        &self,
        build_id: &str,
        template_id: &str,
        now: &str,
    ) -> Result<(), BuildError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO builds (id, template_id, status, backend, created_at) VALUES (?1, ?2, 'building', 'native', ?3)",
                params![build_id, template_id, now],
            )
            .map(|_| ())
        })
    }

    /// Marks a build failed with its error message.
    pub fn fail_build(&self, build_id: &str, error: &str, now: &str) -> Result<(), BuildError> {
        self.with(|c| {
            c.execute(
                "UPDATE builds SET status = 'error', error = ?2, finished_at = ?3 WHERE id = ?1",
                params![build_id, error, now],
            )
            .map(|_| ())
        })
    }

    /// Marks a build ready and points its tags at it, in one transaction.
    pub fn publish(
        &self,
        build_id: &str,
        template_id: &str,
        tags: &[String],
        artifact_dir: &Path,
        now: &str,
    ) -> Result<(), BuildError> {
        let artifact = artifact_dir.to_string_lossy().into_owned();
        self.with(|c| {
            let tx = c.transaction()?;
            tx.execute(
                "UPDATE builds SET status = 'ready', artifact_dir = ?2, finished_at = ?3 WHERE id = ?1",
                params![build_id, artifact, now],
            )?;
            for tag in tags {
                tx.execute(
                    "INSERT INTO tags (template_id, tag, build_id) VALUES (?1, ?2, ?3)
                     ON CONFLICT (template_id, tag) DO UPDATE SET build_id = excluded.build_id",
                    params![template_id, tag, build_id],
                )?;
            }
            tx.commit()
        })
    }

    /// Resolves `name`, `name:tag`, `name:tb_...` or `local/name[:tag]` to a ready build.
    pub fn resolve(&self, reference: &str) -> Result<ResolvedRef, BuildError> {
        let not_found = || BuildError::NotFound {
            reference: reference.to_string(),
        };
        let unqualified = reference
            .strip_prefix(&format!("{LOCAL_NAMESPACE}/"))
            .unwrap_or(reference);
        let (given, selector) = unqualified
            .split_once(':')
            .unwrap_or((unqualified, "default"));
        let name = self.name_of(given)?;
        let name = name.as_str();
        let row: Option<(String, String, String)> = self.with(|c| {
            if selector.starts_with("tb_") {
                c.query_row(
                    "SELECT t.id, b.id, b.artifact_dir FROM templates t JOIN builds b ON b.template_id = t.id
                     WHERE t.namespace = ?1 AND t.name = ?2 AND b.id = ?3 AND b.status = 'ready'",
                    params![LOCAL_NAMESPACE, name, selector],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()
            } else {
                c.query_row(
                    "SELECT t.id, b.id, b.artifact_dir FROM templates t
                     JOIN tags g ON g.template_id = t.id JOIN builds b ON b.id = g.build_id
                     WHERE t.namespace = ?1 AND t.name = ?2 AND g.tag = ?3 AND b.status = 'ready'",
                    params![LOCAL_NAMESPACE, name, selector],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()
            }
        })?;
        let (template_id, build_id, artifact_dir) = row.ok_or_else(not_found)?;
        Ok(ResolvedRef {
            template_id,
            name: name.to_string(),
            build_id,
            artifact_dir: PathBuf::from(artifact_dir),
        })
    }

    /// The template name `name_or_alias` means: itself, or the template it is an alias of.
    fn name_of(&self, name_or_alias: &str) -> Result<String, BuildError> {
        let aliased: Option<String> = self.with(|c| {
            c.query_row(
                "SELECT t.name FROM template_aliases a JOIN templates t ON t.id = a.template_id
                 WHERE a.namespace = ?1 AND a.alias = ?2",
                params![LOCAL_NAMESPACE, name_or_alias],
                |r| r.get(0),
            )
            .optional()
        })?;
        Ok(aliased.unwrap_or_else(|| name_or_alias.to_string()))
    }

    /// Renames local template `reference` (a name or alias) to `new_name`; its builds, tags
    /// and aliases stay.
    pub fn rename(&self, reference: &str, new_name: &str) -> Result<(), BuildError> {
        crate::request::validate_name(new_name)?;
        let name = self.name_of(reference.strip_prefix("local/").unwrap_or(reference))?;
        let id: Option<String> = self.with(|c| {
            c.query_row(
                "SELECT id FROM templates WHERE namespace = ?1 AND name = ?2",
                params![LOCAL_NAMESPACE, name],
                |r| r.get(0),
            )
            .optional()
        })?;
        let id = id.ok_or_else(|| BuildError::NotFound {
            reference: reference.to_string(),
        })?;
        self.with(|c| rename_template_row(c, LOCAL_NAMESPACE, &id, new_name))?
            .map_err(|why| BuildError::InvalidRequest {
                field: "name".into(),
                message: why,
            })
    }

    /// Lists templates that have at least one tag.
    pub fn list(&self) -> Result<Vec<TemplateSummary>, BuildError> {
        let rows: Vec<(String, String, String, String)> = self.with(|c| {
            let mut statement = c.prepare(
                "SELECT t.id, t.name, g.tag, g.build_id FROM templates t JOIN tags g ON g.template_id = t.id
                 ORDER BY t.name, g.tag",
            )?;
            let rows = statement
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })?;
        let mut out: Vec<TemplateSummary> = Vec::new();
        for (id, name, tag, build) in rows {
            match out.last_mut() {
                Some(last) if last.id == id => last.tags.push((tag, build)),
                _ => out.push(TemplateSummary {
                    canonical_ref: format!("{LOCAL_NAMESPACE}/{name}:{tag}"),
                    id,
                    name,
                    tags: vec![(tag, build)],
                }),
            }
        }
        Ok(out)
    }
}
