//! A retry: the stored definition of a build, with fresh request-time values (stored ones are
//! never replayed) and optionally new tags.

use nullspace_api::request::RetryBody;
use nullspace_api::{BuildBackend, RequestError};

use crate::dockerfile::BuildkitPolicy;

use super::buildkit::checked;
use super::parse::checked_tags;
use super::secrets::{base_image_credentials, build_secret_values, registry_credentials};
use super::{Base, BuildDefinition, RequestSecrets};

/// The definition and secrets of a retry of `build_id`, whose stored definition is
/// `original`. A retry must bring again what was never stored: base-image credentials, the
/// same build-secret ids, registry credentials.
pub fn retry_definition(
    build_id: &str,
    original: &BuildDefinition,
    body: RetryBody,
    policy: &BuildkitPolicy,
) -> Result<(BuildDefinition, RequestSecrets), RequestError> {
    let mut definition = original.clone();
    if let Some(tags) = body.tags {
        let tags = tags.into_vec();
        if tags.is_empty() {
            return Err(RequestError::invalid(
                "tags",
                "must not be empty (leave it out to keep the original tags)",
            ));
        }
        definition.tags = checked_tags(Some(tags), "tags")?;
    }
    let auth = body
        .base_image_auth
        .as_ref()
        .map(base_image_credentials)
        .transpose()?;
    match (&original.base_image_auth_kind, &auth) {
        (Some(kind), None) => {
            return Err(RequestError::invalid(
                "base_image_auth",
                format!(
                    "build {build_id} used private base-image credentials ({kind}); stored credentials are never replayed, so a retry needs a fresh base_image_auth"
                ),
            ))
        }
        (None, Some(_)) if matches!(definition.base, Base::Template { .. }) => {
            return Err(RequestError::invalid(
                "base_image_auth",
                "a template base needs no registry credentials",
            ))
        }
        _ => {}
    }
    definition.base_image_auth_kind = auth.as_ref().map(|a| a.kind().to_string());
    let build_secrets = build_secret_values(body.build_secrets.as_ref())?;
    let registry_auth = registry_credentials(body.registry_auth.as_deref())?;
    if definition.build_backend != BuildBackend::Buildkit {
        for (field, given) in [
            ("build_secrets", !build_secrets.is_empty()),
            ("registry_auth", !registry_auth.is_empty()),
        ] {
            if given {
                return Err(RequestError::invalid(
                    field,
                    format!("build {build_id} is a native build; only BuildKit builds (dockerfile or steps) use {field}"),
                ));
            }
        }
    }
    let ids: Vec<String> = build_secrets.keys().cloned().collect();
    if !original.build_secret_ids.is_empty() && ids != original.build_secret_ids {
        return Err(RequestError::invalid(
            "build_secrets",
            format!(
                "build {build_id} used build secrets {:?}; their values are never stored, so a retry must send the same secret ids again",
                original.build_secret_ids
            ),
        ));
    }
    if !original.registry_auth_hosts.is_empty() && registry_auth.is_empty() {
        return Err(RequestError::invalid(
            "registry_auth",
            format!(
                "build {build_id} used registry credentials for {:?}; stored credentials are never replayed, so a retry needs a fresh registry_auth",
                original.registry_auth_hosts
            ),
        ));
    }
    definition.build_secret_ids = ids;
    if let Some(manifest) = &mut definition.build_context {
        // The retry uploads nothing: every blob it reads is reused.
        manifest.mark_reused();
    }
    definition.registry_auth_hosts = registry_auth.iter().map(|a| a.registry.clone()).collect();
    let secrets = RequestSecrets {
        base_image_auth: auth,
        build_secrets,
        registry_auth,
    };
    checked(definition, secrets, policy)
}
