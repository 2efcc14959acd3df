//! `validate` and `plan`: the request checked, and what a build would do, without building.

use axum::extract::State;
use axum::{Extension, Json};

use nullspace_api::request::BuildRequestBody;
use nullspace_api::response::{
    BuildPlan, ContextSummary, PlanResponse, Validation, ValidationIssue,
};
use nullspace_api::{BuildBackend, ContextManifest, ErrorEnvelope, FailurePhase, Step};
use nullspace_build::context::parse_digest;
use nullspace_build::definition::{checked_buildkit_spec, Base, BuildDefinition};
use nullspace_rootfs::runtime::RuntimeDefaults;

use crate::error::ApiError;
use crate::refs::resolve_ref;

use super::blobs::missing_context_blobs;
use super::builds::check_template_base;
use super::extract::{JsonBody, Owner};
use super::{ApiResult, AppState};

fn validation_warnings(definition: &BuildDefinition) -> Vec<String> {
    let mut warnings = Vec::new();
    if !definition.internet_access && definition.build_backend == BuildBackend::Native {
        warnings.push(
            "internet_access=false has no effect on an image import (the base image is still pulled)"
                .to_string(),
        );
    }
    warnings
}

/// How many of the contexts' blobs the caller has not uploaded yet, and how many there are.
async fn missing_blob_count(
    state: &AppState,
    owner: &str,
    definition: &BuildDefinition,
) -> ApiResult<(usize, usize)> {
    let digests: Vec<_> = definition
        .build_context
        .iter()
        .chain(definition.named_contexts.values())
        .flat_map(ContextManifest::file_digests)
        .filter_map(|d| parse_digest(d).ok())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let total = digests.len();
    Ok((
        missing_context_blobs(state, owner, digests).await?.len(),
        total,
    ))
}

/// Whether the request would be accepted, and what the user should know.
#[utoipa::path(
    post,
    path = "/v1/templates/validate",
    tag = "builds",
    request_body = BuildRequestBody,
    responses((status = 200, body = Validation), (status = 400, body = ErrorEnvelope)),
)]
pub async fn validate(
    State(state): State<AppState>,
    Extension(Owner(owner)): Extension<Owner>,
    JsonBody(body): JsonBody<BuildRequestBody>,
) -> ApiResult<Json<Validation>> {
    let checked = match state.parse(body) {
        // Blobs are uploaded when the build starts, so validation reports absent ones as a
        // warning rather than an error; the template base must exist.
        Ok((definition, _)) => {
            let owner = owner.clone();
            state
                .blocking(move |state| {
                    check_template_base(state, &owner, &definition)?;
                    Ok(definition)
                })
                .await
        }
        Err(error) => Err(ApiError::from(error)),
    };
    let definition = match checked {
        Ok(definition) => definition,
        Err(error) => {
            return Ok(Json(Validation {
                valid: false,
                errors: vec![ValidationIssue {
                    code: error.code.to_string(),
                    message: error.message,
                    phase: FailurePhase::Prepare,
                }],
                warnings: Vec::new(),
            }))
        }
    };
    let mut warnings = validation_warnings(&definition);
    if definition.build_context.is_some() || !definition.named_contexts.is_empty() {
        let (missing, total) = missing_blob_count(&state, &owner, &definition).await?;
        if missing > 0 {
            warnings.push(format!(
                "{missing} of {total} file blobs of the build context are not uploaded yet; a build uploads them first"
            ));
        }
    }
    Ok(Json(Validation {
        valid: true,
        errors: Vec::new(),
        warnings,
    }))
}

/// The runtime defaults that declarative steps set (env keys, user, workdir); values of env
/// vars are never shown.
fn declared_defaults(steps: &[Step]) -> RuntimeDefaults {
    let mut defaults = RuntimeDefaults::default();
    for step in steps {
        match step {
            Step::SetRuntimeEnvs { envs } => {
                for key in envs.keys() {
                    defaults.env.insert(key.clone(), String::new());
                }
            }
            Step::SetUser { user } => defaults.user = Some(user.clone()),
            Step::SetWorkdir { path } => defaults.workdir = Some(path.clone()),
            _ => {}
        }
    }
    defaults
}

/// What a build of the request would do (§3.8), without building.
#[utoipa::path(
    post,
    path = "/v1/templates/plan",
    tag = "builds",
    request_body = BuildRequestBody,
    responses((status = 200, body = PlanResponse), (status = 400, body = ErrorEnvelope)),
)]
pub async fn plan(
    State(state): State<AppState>,
    Extension(Owner(owner)): Extension<Owner>,
    JsonBody(body): JsonBody<BuildRequestBody>,
) -> ApiResult<Json<PlanResponse>> {
    let (definition, secrets) = state.parse(body)?;
    let mut warnings = validation_warnings(&definition);
    let buildkit = checked_buildkit_spec(&definition, &secrets, state.policy())?;
    let rendered = buildkit
        .as_ref()
        .and_then(|(_, rendered, _)| rendered.clone());
    let (base_image, base_template, defaults) = match &definition.base {
        Base::Dockerfile { .. } => {
            warnings.push(
                "runtime defaults (env, user, workdir, command) come from the built image's config"
                    .to_string(),
            );
            let final_base = buildkit
                .as_ref()
                .and_then(|(_, _, parsed)| parsed.final_base());
            (final_base, None, None)
        }
        Base::Image { selector } => {
            let requested = selector
                .image_reference()
                .map_err(|e| ApiError::invalid_body(e.to_string()))?;
            let canonical = nullspace_oci::Reference::parse(&requested)
                .map(|r| r.to_string())
                .map_err(|e| ApiError::invalid("base_image", e))?;
            warnings.push(
                "runtime defaults (env, user, workdir, start command, readiness) come from the image config when the build resolves it".to_string(),
            );
            let defaults = rendered
                .as_ref()
                .map(|_| declared_defaults(&definition.steps));
            (Some(canonical), None, defaults)
        }
        Base::Template { reference } => {
            let (who, reference) = (owner.clone(), reference.clone());
            let parent = state
                .blocking(move |state| {
                    let store = state.runner.store().as_ref();
                    resolve_ref(store, &who, &reference).or_else(|own| match reference.as_str() {
                        crate::runner::BASE => {
                            resolve_ref(store, crate::runner::BUILTIN_OWNER, &reference)
                                .map_err(|_| own)
                        }
                        _ => Err(own),
                    })
                })
                .await?;
            let mut defaults = parent.build.result.map(|r| r.runtime_defaults);
            if rendered.is_some() {
                let declared = declared_defaults(&definition.steps);
                if let Some(d) = &mut defaults {
                    d.env.extend(declared.env);
                    d.user = declared.user.or(d.user.take());
                    d.workdir = declared.workdir.or(d.workdir.take());
                }
            }
            let base = format!("{owner}/{}:{}", parent.template.name, parent.build.id);
            (None, Some(base), defaults)
        }
    };
    // The request's start command and readiness replace whatever the base provides.
    let defaults = if definition.start_cmd.is_some() || definition.readiness.is_some() {
        let mut defaults = defaults.unwrap_or_default();
        definition
            .engine_request()
            .apply_runtime_overrides(&mut defaults);
        Some(defaults)
    } else {
        defaults
    };
    let defaults = defaults.as_ref();
    Ok(Json(PlanResponse {
        build_plan: BuildPlan {
            source_kind: definition.source_kind(),
            dockerfile: rendered.as_ref().map(|r| r.dockerfile.clone()),
            build_env_keys: rendered
                .as_ref()
                .map(|r| r.build_env_keys.clone())
                .unwrap_or_default(),
            build_secret_ids: definition.build_secret_ids.clone(),
            build_backend: definition.build_backend,
            name: definition.name.clone(),
            tags: definition.tags.clone(),
            base_image,
            base_template,
            run_steps: Vec::new(),
            build_steps: Vec::new(),
            build_envs: Default::default(),
            env_assignments: Vec::new(),
            default_env_keys: defaults.map(|d| d.env.keys().cloned().collect()),
            ignored_instructions: Vec::new(),
            start_cmd: defaults.and_then(|d| d.start_cmd.clone()),
            default_user: defaults.and_then(|d| d.user.clone()),
            default_workdir: defaults.and_then(|d| d.workdir.clone()),
            readiness: defaults.and_then(|d| d.readiness.clone()),
            ignored_instruction_warnings: Vec::new(),
            build_config: crate::view::build_config(&definition),
            build_vm: nullspace_api::response::BuildVmPlan {
                runs_when: if state.require_snapshots() {
                    "always".into()
                } else {
                    "start_cmd_or_readiness".into()
                },
                cpu_count: definition
                    .cpu_count
                    .unwrap_or(nullspace_build::build_vm::DEFAULT_CPU_COUNT),
                memory_mb: definition
                    .memory_mb
                    .unwrap_or(nullspace_build::build_vm::DEFAULT_MEMORY_MB),
                disk_mb: definition
                    .disk_mb
                    .unwrap_or(nullspace_build::request::DEFAULT_DISK_MB),
                settle_ms_without_readiness: nullspace_build::build_vm::SETTLE_MS,
            },
        },
        warnings,
        requires_base_image_auth: secrets.base_image_auth.is_some(),
        source_digest: None,
        context_manifest: definition.build_context.as_ref().map(|c| ContextSummary {
            context_digest: c.digest(),
            file_count: u64::try_from(c.file_count()).unwrap_or(u64::MAX),
        }),
        dockerfile_digest: None,
    }))
}
