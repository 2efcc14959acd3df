//! Row operations on the template tables (`templates`, `tags`, `template_aliases`), shared
//! by the engine's [`Store`](super::Store) and the build service's store, so that each
//! statement on these tables is written once, here.

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

/// Opens the data dir's SQLite database the way every user of it must: WAL (readers don't block
/// the writer), foreign keys on, and a busy timeout for concurrent writers.
pub fn open_connection(path: &Path) -> rusqlite::Result<Connection> {
    let connection = Connection::open(path)?;
    // Only the server's user may read it (builds, owners, log entries); SQLite gives its
    // -wal and -shm files the same mode.
    {
        use std::os::unix::fs::PermissionsExt as _;
        if let Err(error) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)) {
            tracing::warn!(
                "{}: could not make the database private: {error}",
                path.display()
            );
        }
    }
    connection.pragma_update(None, "journal_mode", "WAL")?;
    connection.pragma_update(None, "foreign_keys", "ON")?;
    connection.busy_timeout(std::time::Duration::from_secs(10))?;
    Ok(connection)
}

/// Returns the id of template `namespace/name`, creating its row (with `new_id`) if needed
/// (the build service's namespaces are API key owners).
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
    let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
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
    let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
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

/// Marks build `build_id` ready with its artifact and points `tags` at it, inside the caller's
/// transaction (the build service also ends its own record there, so that tags only ever point
/// at builds that every reader sees as ready).
pub fn publish_rows(
    connection: &Connection,
    build_id: &str,
    template_id: &str,
    tags: &[String],
    artifact_dir: &str,
    now: &str,
) -> rusqlite::Result<()> {
    connection.execute(
        "UPDATE builds SET status = 'ready', artifact_dir = ?2, finished_at = ?3 WHERE id = ?1",
        params![build_id, artifact_dir, now],
    )?;
    for tag in tags {
        set_tag_row(connection, template_id, tag, build_id)?;
    }
    Ok(())
}

/// Points `tag` of template `template_id` at `build_id` (moving it if it pointed elsewhere).
pub fn set_tag_row(
    connection: &Connection,
    template_id: &str,
    tag: &str,
    build_id: &str,
) -> rusqlite::Result<()> {
    connection
        .execute(
            "INSERT INTO tags (template_id, tag, build_id) VALUES (?1, ?2, ?3)
             ON CONFLICT (template_id, tag) DO UPDATE SET build_id = excluded.build_id",
            params![template_id, tag, build_id],
        )
        .map(|_| ())
}

/// The build `tag` of template `template_id` points at, if any.
pub fn tag_target(
    connection: &Connection,
    template_id: &str,
    tag: &str,
) -> rusqlite::Result<Option<String>> {
    connection
        .query_row(
            "SELECT build_id FROM tags WHERE template_id = ?1 AND tag = ?2",
            params![template_id, tag],
            |r| r.get(0),
        )
        .optional()
}

/// Removes `tag` of template `template_id`; false when it had none.
pub fn remove_tag_row(
    connection: &Connection,
    template_id: &str,
    tag: &str,
) -> rusqlite::Result<bool> {
    connection
        .execute(
            "DELETE FROM tags WHERE template_id = ?1 AND tag = ?2",
            params![template_id, tag],
        )
        .map(|n| n > 0)
}

/// Every template of `namespace` with its tags: `(id, name, tag, build_id)` rows, a template
/// without tags once with `None`s, ordered by name and tag.
#[allow(clippy::type_complexity)] // One row of a join.
pub fn template_tag_rows(
    connection: &Connection,
    namespace: &str,
) -> rusqlite::Result<Vec<(String, String, Option<String>, Option<String>)>> {
    let mut statement = connection.prepare(
        "SELECT t.id, t.name, g.tag, g.build_id FROM templates t
         LEFT JOIN tags g ON g.template_id = t.id
         WHERE t.namespace = ?1 ORDER BY t.name, g.tag",
    )?;
    let rows = statement
        .query_map(params![namespace], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })?
        .collect();
    rows
}
