//! JSON views of records: the build object (§3.4), history rows, template details (§3.9).
//! Runtime env values never leave the server: views show the keys only.

use serde_json::{json, Value};

use crate::refs::default_tag;
use crate::store::{status, BuildRecord, TemplateRow};

fn runtime_defaults(record: &BuildRecord) -> Value {
    match &record.result {
        Some(result) => {
            let defaults = &result.runtime_defaults;
            json!({
                "default_env_keys": defaults.env.keys().collect::<Vec<_>>(),
                "start_cmd": defaults.start_cmd,
                "default_user": defaults.user,
                "default_workdir": defaults.workdir,
                "readiness": defaults.readiness,
            })
        }
        None => Value::Null,
    }
}

fn artifact_available(record: &BuildRecord) -> (bool, Option<&'static str>) {
    if record.status != status::READY {
        return (false, Some("build_not_ready"));
    }
    match &record.result {
        Some(result) if std::path::Path::new(&result.artifact_dir).is_dir() => (true, None),
        _ => (false, Some("artifact_missing")),
    }
}

/// The build object.
pub fn build(record: &BuildRecord) -> Value {
    let definition = &record.definition;
    let (available, reason) = artifact_available(record);
    let error_detail = match (&record.failure_phase, &record.error_message) {
        (Some(phase), Some(message)) if record.status == status::ERROR => {
            json!({ "phase": phase, "message": message })
        }
        _ => Value::Null,
    };
    json!({
        "build_id": record.id,
        "template_id": record.template_id,
        "name": record.name,
        "tags": record.tags,
        "canonical_ref": format!(
            "{}/{}:{}",
            record.owner,
            record.name,
            record.tags.first().map(String::as_str).unwrap_or("default")
        ),
        "namespace_slug": record.owner,
        "status": record.status,
        "source_kind": definition.source_kind(),
        "build_backend": definition.build_backend,
        "base_image_auth_kind": definition.base_image_auth_kind,
        "triggered_by": if record.retry_of.is_some() { "retry" } else { "api" },
        "retry_of": record.retry_of,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
        "queued_at": record.queued_at,
        "started_at": record.started_at,
        "finished_at": record.finished_at,
        "duration_ms": record.duration_ms,
        "failure_phase": record.failure_phase,
        "error": if record.status == status::ERROR { json!(record.error_message) } else { Value::Null },
        "error_detail": error_detail,
        "source_digest": record.result.as_ref().and_then(|r| r.source_digest.clone()),
        "context_digest": definition.context_summary.as_ref().map(|(digest, _)| digest),
        "context_file_count": definition.context_summary.as_ref().map(|(_, count)| count),
        "dockerfile_digest": null,
        "build_config": {
            "vcpus": definition.cpu_count,
            "memory_mib": definition.memory_mb,
            "internet_access": definition.internet_access,
            "disk_mb": definition.disk_mb,
            "skip_cache": definition.skip_cache,
        },
        "cache_summary": record.cache_summary,
        "artifact_availability": { "available": available, "reason": reason },
        "promotability": { "promotable": available, "reason": reason },
        "retention_expires_at": null,
        "runtime_defaults": runtime_defaults(record),
        "oci_metadata": record.result.as_ref().map(|r| json!(r.oci_metadata)),
    })
}

/// A build history row: the build object without the per-template fields, plus
/// `artifact_ids`.
pub fn history_row(record: &BuildRecord) -> Value {
    let mut row = build(record);
    if let Value::Object(map) = &mut row {
        for key in [
            "canonical_ref",
            "namespace_slug",
            "build_config",
            "runtime_defaults",
        ] {
            map.remove(key);
        }
        let artifacts: Vec<&str> = if record.status == status::READY {
            vec![record.id.as_str()]
        } else {
            Vec::new()
        };
        map.insert("artifact_ids".into(), json!(artifacts));
    }
    row
}

/// The fields a `fields` mask may name.
pub const TEMPLATE_FIELDS: &[&str] = &[
    "id",
    "name",
    "description",
    "tags",
    "default_tag",
    "builtin",
    "canonical_ref",
    "namespace_slug",
    "visibility",
];

/// Template details; `build` is the build the ref (or default tag) points at.
pub fn template(row: &TemplateRow, tag: Option<&str>, build: Option<&BuildRecord>) -> Value {
    let default = default_tag(row);
    let tag = tag.map(str::to_string).or_else(|| default.clone());
    let canonical_ref = match (&tag, build) {
        (Some(tag), _) => format!("{}/{}:{tag}", row.namespace, row.name),
        (None, Some(build)) => format!("{}/{}:{}", row.namespace, row.name, build.id),
        (None, None) => format!("{}/{}", row.namespace, row.name),
    };
    json!({
        "id": row.id,
        "name": row.name,
        "description": null,
        "builtin": false,
        "canonical_ref": canonical_ref,
        "namespace_slug": row.namespace,
        "visibility": "private",
        "tags": row.tags.iter().map(|(t, _)| t).collect::<Vec<_>>(),
        "default_tag": default,
        "aliases": row.aliases,
        "build_id": build.map(|b| b.id.clone()),
        "runtime_defaults": build.map(runtime_defaults),
    })
}

/// Keeps only `fields` (comma-separated) of `value`; unknown names are an error naming them.
pub fn mask(value: Value, fields: Option<&str>) -> Result<Value, String> {
    let Some(fields) = fields.filter(|f| !f.trim().is_empty()) else {
        return Ok(value);
    };
    let wanted: Vec<&str> = fields.split(',').map(str::trim).collect();
    if let Some(unknown) = wanted.iter().find(|f| !TEMPLATE_FIELDS.contains(f)) {
        return Err(format!(
            "unknown field {unknown:?}; supported: {}",
            TEMPLATE_FIELDS.join(", ")
        ));
    }
    let Value::Object(map) = value else {
        return Ok(value);
    };
    Ok(Value::Object(
        map.into_iter()
            .filter(|(k, _)| wanted.contains(&k.as_str()))
            .collect(),
    ))
}
