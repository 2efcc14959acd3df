//! Records as the API shows them: the build object (§3.4), history rows, template details
//! (§3.9). Runtime env values never leave the server: views show the keys only.

use nullspace_api::response::{
    ArtifactAvailability, Build, BuildConfig, BuildSummary, HistoryRow, Promotability,
    RuntimeDefaultsView, TemplateDetails, TEMPLATE_MASK_FIELDS,
};
use nullspace_api::{BuildStatus, ErrorDetail, TriggeredBy, Visibility};
use nullspace_build::definition::BuildDefinition;
use serde_json::Value;

use crate::refs::default_tag;
use crate::store::{BuildRecord, TemplateRow};

fn runtime_defaults(record: &BuildRecord) -> Option<RuntimeDefaultsView> {
    record.result.as_ref().map(|result| {
        let defaults = &result.runtime_defaults;
        RuntimeDefaultsView {
            default_env_keys: defaults.env.keys().cloned().collect(),
            start_cmd: defaults.start_cmd.clone(),
            default_user: defaults.user.clone(),
            default_workdir: defaults.workdir.clone(),
            readiness: defaults.readiness.clone(),
        }
    })
}

/// Whether the build's artifact can be used, and why not.
fn artifact_available(record: &BuildRecord) -> (bool, Option<String>) {
    if record.status != BuildStatus::Ready {
        return (false, Some("build_not_ready".into()));
    }
    match &record.result {
        // Here, or in object storage for any host to fetch.
        Some(result)
            if result.artifact_manifest.is_some()
                || std::path::Path::new(&result.artifact_dir).is_dir() =>
        {
            (true, None)
        }
        _ => (false, Some("artifact_missing".into())),
    }
}

/// Whether a tag can be moved to the build, and why not.
pub fn promotability(record: &BuildRecord) -> Promotability {
    let (promotable, reason) = artifact_available(record);
    Promotability { promotable, reason }
}

/// The resources a build asked for.
pub fn build_config(definition: &BuildDefinition) -> BuildConfig {
    BuildConfig {
        vcpus: definition.cpu_count,
        memory_mib: definition.memory_mb,
        internet_access: definition.internet_access,
        disk_mb: definition.disk_mb,
        skip_cache: definition.skip_cache,
    }
}

fn summary(record: &BuildRecord) -> BuildSummary {
    let definition = &record.definition;
    let (available, reason) = artifact_available(record);
    let failed = record.status == BuildStatus::Error;
    let error_detail = match (&record.failure_phase, &record.error_message) {
        (Some(phase), Some(message)) if failed => Some(ErrorDetail {
            phase: *phase,
            message: message.clone(),
        }),
        _ => None,
    };
    BuildSummary {
        build_id: record.id.clone(),
        template_id: record.template_id.clone(),
        name: record.name.clone(),
        tags: record.tags.clone(),
        status: record.status,
        source_kind: definition.source_kind(),
        build_backend: definition.build_backend,
        base_image_auth_kind: definition.base_image_auth_kind.clone(),
        triggered_by: if record.retry_of.is_some() {
            TriggeredBy::Retry
        } else {
            TriggeredBy::Api
        },
        retry_of: record.retry_of.clone(),
        created_at: record.created_at.clone(),
        updated_at: record.updated_at.clone(),
        queued_at: record.queued_at.clone(),
        started_at: record.started_at.clone(),
        finished_at: record.finished_at.clone(),
        duration_ms: record.duration_ms,
        failure_phase: record.failure_phase,
        error: if failed {
            record.error_message.clone()
        } else {
            None
        },
        error_detail,
        source_digest: record.result.as_ref().and_then(|r| r.source_digest.clone()),
        context_digest: definition.context_summary.as_ref().map(|(d, _)| d.clone()),
        context_file_count: definition
            .context_summary
            .as_ref()
            .map(|(_, count)| u64::try_from(*count).unwrap_or(u64::MAX)),
        dockerfile_digest: None,
        cache_summary: record.cache_summary.clone(),
        artifact_availability: ArtifactAvailability {
            available,
            reason: reason.clone(),
        },
        promotability: Promotability {
            promotable: available,
            reason,
        },
        retention_expires_at: None,
        oci_metadata: record.result.as_ref().map(|r| r.oci_metadata.clone()),
    }
}

/// `owner/name:tag` of a build (its first tag).
pub fn canonical_ref(record: &BuildRecord) -> String {
    format!(
        "{}/{}:{}",
        record.owner,
        record.name,
        record.tags.first().map(String::as_str).unwrap_or("default")
    )
}

/// The build object.
pub fn build(record: &BuildRecord) -> Build {
    Build {
        summary: summary(record),
        canonical_ref: canonical_ref(record),
        namespace_slug: record.owner.clone(),
        build_config: build_config(&record.definition),
        runtime_defaults: runtime_defaults(record),
    }
}

/// A build history row.
pub fn history_row(record: &BuildRecord) -> HistoryRow {
    HistoryRow {
        summary: summary(record),
        artifact_ids: if record.status == BuildStatus::Ready {
            vec![record.id.clone()]
        } else {
            Vec::new()
        },
    }
}

/// Template details; `build` is the build the ref (or default tag) points at.
pub fn template(
    row: &TemplateRow,
    tag: Option<&str>,
    build: Option<&BuildRecord>,
) -> TemplateDetails {
    let default = default_tag(row);
    let tag = tag.map(str::to_string).or_else(|| default.clone());
    let canonical_ref = match (&tag, build) {
        (Some(tag), _) => format!("{}/{}:{tag}", row.namespace, row.name),
        (None, Some(build)) => format!("{}/{}:{}", row.namespace, row.name, build.id),
        (None, None) => format!("{}/{}", row.namespace, row.name),
    };
    TemplateDetails {
        id: row.id.clone(),
        name: row.name.clone(),
        description: None,
        builtin: false,
        canonical_ref,
        namespace_slug: row.namespace.clone(),
        visibility: Visibility::Private,
        tags: row.tags.iter().map(|(t, _)| t.clone()).collect(),
        default_tag: default,
        aliases: row.aliases.clone(),
        build_id: build.map(|b| b.id.clone()),
        runtime_defaults: build.and_then(runtime_defaults),
    }
}

/// `details` with only `fields` (comma-separated) kept; unknown names are an error naming
/// them.
pub fn mask(details: &TemplateDetails, fields: Option<&str>) -> Result<Value, String> {
    let value = serde_json::to_value(details).map_err(|e| e.to_string())?;
    let Some(fields) = fields.filter(|f| !f.trim().is_empty()) else {
        return Ok(value);
    };
    let wanted: Vec<&str> = fields.split(',').map(str::trim).collect();
    if let Some(unknown) = wanted.iter().find(|f| !TEMPLATE_MASK_FIELDS.contains(f)) {
        return Err(format!(
            "unknown field {unknown:?}; supported: {}",
            TEMPLATE_MASK_FIELDS.join(", ")
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
