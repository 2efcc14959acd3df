//! Durable records of templates, builds and tags (SQLite in the data dir).
//!
//! Publication is one transaction: the build's row turns `ready` and its tags move to it
//! together, so a reader sees either the old tag targets or the complete new template.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub mod rows;
pub mod schema;

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use crate::error::BuildError;

pub use rows::{
    add_alias_row, alias_rows, ensure_template_row, open_connection, publish_rows,
    remove_alias_row, remove_tag_row, rename_template_row, set_tag_row, tag_target,
    template_tag_rows,
};

/// The namespace of templates built on this machine.
pub const LOCAL_NAMESPACE: &str = "local";

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
        let mut connection = open_connection(path).map_err(err)?;
        schema::migrate(&mut connection).map_err(|message| BuildError::Migration {
            path: path.to_path_buf(),
            message,
        })?;
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

    /// Gives a template whose records live in a shared store (PostgreSQL) a row here, so this
    /// host's build rows can name it; it stands under the namespace `@shared`, named by its
    /// id, and no ref resolves to it.
    pub fn mirror_template(&self, template_id: &str) -> Result<(), BuildError> {
        self.with(|c| {
            c.execute(
                "INSERT OR IGNORE INTO templates (id, namespace, name, created_at) VALUES (?1, '@shared', ?1, ?2)",
                params![template_id, crate::ids::now_rfc3339()],
            )
            .map(|_| ())
        })
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
                "INSERT INTO builds (id, template_id, status, backend, created_at) VALUES (?1, ?2, 'building', 'native', ?3)
                 ON CONFLICT (id) DO UPDATE SET status = 'building', finished_at = NULL, error = NULL, artifact_dir = NULL",
                params![build_id, template_id, now],
            )
            .map(|_| ())
        })
    }

    /// The artifact dirs of ready builds (what garbage collection must keep).
    pub fn ready_artifact_dirs(&self) -> Result<Vec<String>, BuildError> {
        self.with(|c| {
            let mut statement = c.prepare(
                "SELECT artifact_dir FROM builds WHERE status = 'ready' AND artifact_dir IS NOT NULL",
            )?;
            let rows = statement
                .query_map([], |r| r.get(0))?
                .collect::<rusqlite::Result<Vec<String>>>()?;
            Ok(rows)
        })
    }

    /// Whether `owner` has itself fetched blob `digest` from a registry.
    pub fn has_blob_access(&self, owner: &str, digest: &str) -> Result<bool, BuildError> {
        self.with(|c| {
            c.query_row(
                "SELECT 1 FROM blob_access WHERE owner = ?1 AND digest = ?2",
                params![owner, digest],
                |_| Ok(()),
            )
            .optional()
            .map(|row| row.is_some())
        })
    }

    /// Records that `owner` fetched blob `digest` from a registry (the digest verified).
    pub fn record_blob_access(&self, owner: &str, digest: &str) -> Result<(), BuildError> {
        self.with(|c| {
            c.execute(
                "INSERT OR IGNORE INTO blob_access (owner, digest) VALUES (?1, ?2)",
                params![owner, digest],
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
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            publish_rows(&tx, build_id, template_id, tags, &artifact, now)?;
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
