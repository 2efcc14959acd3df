//! Builds: start, status with log entries, cancel, retry, promote.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};

use nullspace_api::request::{BuildRequestBody, CancelBody, PromoteBody, RetryBody};
use nullspace_api::response::{Build, BuildEnvelope, BuildStatusPage, Promoted};
use nullspace_api::{ContextEntry, ErrorEnvelope};
use nullspace_build::context::parse_digest;
use nullspace_build::definition::{retry_definition, Base, BuildDefinition};
use nullspace_build::request::validate_tag;

use crate::error::ApiError;
use crate::refs::resolve_ref;
use crate::view;

use super::blobs::missing_context_blobs;
use super::extract::{JsonBody, Owner, QueryParams};
use super::{ApiResult, AppState};

/// Entries returned by one status poll.
const PAGE: usize = 1000;

/// Checks that a template base exists in the caller's own refs (an owner without a `base`
/// builds on the builtin one, built first if need be).
pub(super) fn check_template_base(
    state: &AppState,
    owner: &str,
    definition: &BuildDefinition,
) -> ApiResult<()> {
    if let Base::Template { reference } = &definition.base {
        if reference != crate::runner::BASE {
            resolve_ref(state.runner.store().as_ref(), owner, reference)?;
        }
    }
    Ok(())
}

/// Every file blob of the build contexts was uploaded by the caller.
async fn check_context_uploaded(
    state: &AppState,
    owner: &str,
    definition: &BuildDefinition,
) -> ApiResult<()> {
    let files: Vec<(&str, &str)> = definition
        .build_context
        .iter()
        .chain(definition.named_contexts.values())
        .flat_map(|manifest| &manifest.entries)
        .filter_map(|entry| match entry {
            ContextEntry::File { path, digest, .. } => Some((path.as_str(), digest.as_str())),
            _ => None,
        })
        .collect();
    if files.is_empty() {
        return Ok(());
    }
    let digests = files
        .iter()
        .map(|(_, digest)| parse_digest(digest).map_err(|e| ApiError::invalid("build_context", e)))
        .collect::<ApiResult<Vec<_>>>()?;
    let missing: std::collections::HashSet<String> = missing_context_blobs(state, owner, digests)
        .await?
        .into_iter()
        .collect();
    match files.iter().find(|(_, digest)| missing.contains(*digest)) {
        Some((path, digest)) => Err(ApiError::file_upload(format!(
            "build context file {path:?}: blob {digest} was not uploaded (ask /v1/templates/build-context/blobs/missing, then PUT it)"
        ))),
        None => Ok(()),
    }
}

/// Queues a build; it runs in the background.
#[utoipa::path(
    post,
    path = "/v1/templates/builds",
    tag = "builds",
    request_body = BuildRequestBody,
    responses(
        (status = 202, body = Build),
        (status = 400, body = ErrorEnvelope, description = "invalid_request, naming the field"),
        (status = 413, body = ErrorEnvelope, description = "file_upload_limit_exceeded"),
        (status = 422, body = ErrorEnvelope, description = "file_upload_error: a context blob was not uploaded"),
    ),
)]
pub async fn create_build(
    State(state): State<AppState>,
    Extension(Owner(owner)): Extension<Owner>,
    JsonBody(body): JsonBody<BuildRequestBody>,
) -> ApiResult<(StatusCode, Json<Build>)> {
    let (definition, secrets) = state.parse(body)?;
    check_context_uploaded(&state, &owner, &definition).await?;
    let record = state
        .blocking(move |state| {
            check_template_base(state, &owner, &definition)?;
            state.runner.submit(&owner, definition, secrets, None)
        })
        .await?;
    Ok((StatusCode::ACCEPTED, Json(view::build(&record))))
}

/// The build and its log entries from `offset`.
#[utoipa::path(
    get,
    path = "/v1/templates/builds/{build_id}",
    tag = "builds",
    params(
        ("build_id" = String, Path),
        ("offset" = Option<u64>, Query, description = "first log offset to return"),
    ),
    responses((status = 200, body = BuildStatusPage), (status = 404, body = ErrorEnvelope)),
)]
pub async fn get_build(
    State(state): State<AppState>,
    Extension(Owner(owner)): Extension<Owner>,
    Path(build_id): Path<String>,
    query: QueryParams,
) -> ApiResult<Json<BuildStatusPage>> {
    let offset = query.u64("offset")?.unwrap_or(0);
    state
        .blocking(move |state| {
            let store = state.runner.store();
            let record = store
                .build(Some(&owner), &build_id)?
                .ok_or_else(|| ApiError::build_not_found(&build_id))?;
            let entries = store.entries(&build_id, offset, PAGE)?;
            let next_offset = entries.last().map(|e| e.offset + 1).unwrap_or(offset);
            Ok(Json(BuildStatusPage {
                build: view::build(&record),
                entries,
                next_offset,
            }))
        })
        .await
}

/// Cancels a queued or running build (a build that ended is returned as it is).
#[utoipa::path(
    post,
    path = "/v1/templates/builds/{build_id}/cancel",
    tag = "builds",
    params(("build_id" = String, Path)),
    request_body = CancelBody,
    responses((status = 200, body = BuildEnvelope), (status = 404, body = ErrorEnvelope)),
)]
pub async fn cancel_build(
    State(state): State<AppState>,
    Extension(Owner(owner)): Extension<Owner>,
    Path(build_id): Path<String>,
    JsonBody(body): JsonBody<CancelBody>,
) -> ApiResult<Json<BuildEnvelope>> {
    let reason = body.reason.unwrap_or_default();
    let record = state
        .blocking(move |state| state.runner.cancel(&owner, &build_id, &reason))
        .await?;
    Ok(Json(BuildEnvelope {
        build: view::build(&record),
    }))
}

/// A new attempt from the stored definition, with fresh request-time values.
#[utoipa::path(
    post,
    path = "/v1/templates/builds/{build_id}/retry",
    tag = "builds",
    params(("build_id" = String, Path)),
    request_body = RetryBody,
    responses(
        (status = 202, body = Build),
        (status = 400, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope),
    ),
)]
pub async fn retry_build(
    State(state): State<AppState>,
    Extension(Owner(owner)): Extension<Owner>,
    Path(build_id): Path<String>,
    JsonBody(body): JsonBody<RetryBody>,
) -> ApiResult<(StatusCode, Json<Build>)> {
    let (original, definition, secrets) = {
        let owner = owner.clone();
        state
            .blocking(move |state| {
                let original = state
                    .runner
                    .store()
                    .build(Some(&owner), &build_id)?
                    .ok_or_else(|| ApiError::build_not_found(&build_id))?;
                let (definition, secrets) =
                    retry_definition(&build_id, &original.definition, body, state.policy())?;
                Ok((original.id, definition, secrets))
            })
            .await?
    };
    check_context_uploaded(&state, &owner, &definition).await?;
    let record = state
        .blocking(move |state| {
            check_template_base(state, &owner, &definition)?;
            state
                .runner
                .submit(&owner, definition, secrets, Some(original))
        })
        .await?;
    Ok((StatusCode::ACCEPTED, Json(view::build(&record))))
}

/// Points a tag of the build's template at this (ready) build.
#[utoipa::path(
    post,
    path = "/v1/templates/builds/{build_id}/promote",
    tag = "builds",
    params(("build_id" = String, Path)),
    request_body = PromoteBody,
    responses(
        (status = 200, body = Promoted),
        (status = 404, body = ErrorEnvelope),
        (status = 409, body = ErrorEnvelope, description = "the build is not promotable"),
    ),
)]
pub async fn promote_build(
    State(state): State<AppState>,
    Extension(Owner(owner)): Extension<Owner>,
    Path(build_id): Path<String>,
    JsonBody(body): JsonBody<PromoteBody>,
) -> ApiResult<Json<Promoted>> {
    state
        .blocking(move |state| promote(state, &owner, &build_id, &body.tag).map(Json))
        .await
}

/// Points `tag` of the build's template at `build_id` (a ready build with its artifact).
pub(super) fn promote(
    state: &AppState,
    owner: &str,
    build_id: &str,
    tag: &str,
) -> ApiResult<Promoted> {
    validate_tag(tag).map_err(|e| ApiError::invalid("tag", e))?;
    let store = state.runner.store();
    let record = store
        .build(Some(owner), build_id)?
        .ok_or_else(|| ApiError::build_not_found(build_id))?;
    let promotability = view::promotability(&record);
    if !promotability.promotable {
        return Err(ApiError::conflict(format!(
            "build {build_id} is {} and cannot be promoted ({}); only ready builds with a retained artifact can",
            record.status,
            promotability.reason.as_deref().unwrap_or("not promotable")
        )));
    }
    store.set_tag(&record.template_id, tag, &record.id)?;
    let record = store.build(Some(owner), build_id)?.unwrap_or(record);
    let name = store
        .template(owner, &record.template_id)?
        .map_or_else(|| record.name.clone(), |t| t.name);
    Ok(Promoted {
        build: view::build(&record),
        tag: tag.to_string(),
        canonical_ref: format!("{owner}/{name}:{tag}"),
    })
}
