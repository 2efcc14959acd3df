//! Build-context uploads: which blobs the caller lacks, and the blobs themselves, kept per
//! owner by digest.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};

use nullspace_api::request::MissingBlobsBody;
use nullspace_api::response::{MissingBlobs, UploadedBlob};
use nullspace_api::ErrorEnvelope;
use nullspace_build::context::{parse_digest, ContextBlobs, UploadError};

use crate::error::ApiError;

use super::extract::{JsonBody, Owner};
use super::{ApiResult, AppState};

/// Most digests one `missing` question may ask about.
const MAX_MISSING_QUERY: usize = 200_000;

/// The caller's blob store.
fn context_blobs(state: &AppState, owner: &str) -> ApiResult<ContextBlobs> {
    ContextBlobs::open(state.runner.engine().data_dir(), owner).map_err(ApiError::internal)
}

/// Which of `digests` the caller has not uploaded.
#[utoipa::path(
    post,
    path = "/v1/templates/build-context/blobs/missing",
    tag = "build-context",
    request_body = MissingBlobsBody,
    responses(
        (status = 200, body = MissingBlobs),
        (status = 400, body = ErrorEnvelope),
    ),
)]
pub async fn missing_blobs(
    State(state): State<AppState>,
    Extension(Owner(owner)): Extension<Owner>,
    JsonBody(body): JsonBody<MissingBlobsBody>,
) -> ApiResult<Json<MissingBlobs>> {
    if body.digests.len() > MAX_MISSING_QUERY {
        return Err(ApiError::invalid(
            "digests",
            format!(
                "{} digests; at most {MAX_MISSING_QUERY} per call",
                body.digests.len()
            ),
        ));
    }
    let digests = body
        .digests
        .iter()
        .enumerate()
        .map(|(i, text)| {
            parse_digest(text).map_err(|e| ApiError::invalid(&format!("digests[{i}]"), e))
        })
        .collect::<ApiResult<Vec<_>>>()?;
    let missing = missing_context_blobs(&state, &owner, digests).await?;
    Ok(Json(MissingBlobs { missing }))
}

/// Object storage questions in flight at once for one request.
const PARALLEL_STORAGE_CHECKS: usize = 16;
/// Past this many digests missing here, one listing of the owner's uploads answers instead of
/// a request per digest (a tenant naming 200,000 digests costs a listing, not 200,000 calls).
const HEAD_QUESTIONS_AT_MOST: usize = 32;

/// Which of `digests` (once each) the owner has not uploaded: neither to this process nor,
/// where there is object storage, to any API process of the deployment.
pub(super) async fn missing_context_blobs(
    state: &AppState,
    owner: &str,
    digests: Vec<nullspace_oci::Digest>,
) -> ApiResult<Vec<String>> {
    use futures_util::stream::{self, StreamExt as _, TryStreamExt as _};
    let blobs = context_blobs(state, owner)?;
    // Up to 200k stat calls: off the async workers.
    let missing_here = tokio::task::spawn_blocking(move || blobs.missing(&digests))
        .await
        .map_err(ApiError::internal)?;
    let Some(objects) = state.runner.objects() else {
        return Ok(missing_here);
    };
    let storage_failed = |error: nullspace_build::object_storage::StorageError| {
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            "object_storage_failed",
            format!(
                "asking the shared storage which build-context files you uploaded failed: {error}"
            ),
        )
    };
    if missing_here.len() > HEAD_QUESTIONS_AT_MOST {
        // One listing of the owner's uploads instead of a request per digest.
        let uploaded = objects
            .context_blobs_of(owner)
            .await
            .map_err(storage_failed)?;
        return Ok(missing_here
            .into_iter()
            .filter(|digest| !uploaded.contains(digest))
            .collect());
    }
    let shared: Vec<Option<String>> = stream::iter(missing_here)
        .map(|digest| async move {
            match objects.has_context_blob(owner, &digest).await {
                Ok(true) => Ok(None),
                Ok(false) => Ok(Some(digest)),
                Err(error) => Err(storage_failed(error)),
            }
        })
        .buffered(PARALLEL_STORAGE_CHECKS)
        .try_collect()
        .await?;
    Ok(shared.into_iter().flatten().collect())
}

/// 200 when the caller has uploaded the blob, else 404.
#[utoipa::path(
    head,
    path = "/v1/templates/build-context/blobs/{digest}",
    tag = "build-context",
    params(("digest" = String, Path, description = "sha256:<hex>")),
    responses((status = 200), (status = 404)),
)]
pub async fn has_blob(
    State(state): State<AppState>,
    Extension(Owner(owner)): Extension<Owner>,
    Path(digest): Path<String>,
) -> ApiResult<StatusCode> {
    let parsed = parse_digest(&digest).map_err(|e| ApiError::invalid("digest", e))?;
    let missing = missing_context_blobs(&state, &owner, vec![parsed]).await?;
    Ok(if missing.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::NOT_FOUND
    })
}

/// The file's bytes, streamed to disk and hashed on the way; stored only if they hash to
/// `digest`. Uploading a present blob again replaces it (a forced upload).
#[utoipa::path(
    put,
    path = "/v1/templates/build-context/blobs/{digest}",
    tag = "build-context",
    params(("digest" = String, Path, description = "sha256:<hex>")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses(
        (status = 201, body = UploadedBlob),
        (status = 409, body = ErrorEnvelope, description = "upload_conflict: the bytes hash to another digest"),
        (status = 413, body = ErrorEnvelope, description = "file_upload_limit_exceeded"),
        (status = 429, body = ErrorEnvelope, description = "context_quota_exceeded: the owner's stored context files are at their quota"),
    ),
)]
pub async fn upload_blob(
    State(state): State<AppState>,
    Extension(Owner(owner)): Extension<Owner>,
    Path(digest): Path<String>,
    body: axum::body::Body,
) -> ApiResult<(StatusCode, Json<UploadedBlob>)> {
    use futures_util::StreamExt as _;
    let parsed = parse_digest(&digest).map_err(|e| ApiError::invalid("digest", e))?;
    let blobs = context_blobs(&state, &owner)?;
    // The owner's quota of stored context bytes bounds this upload too.
    let used = {
        let blobs = context_blobs(&state, &owner)?;
        tokio::task::spawn_blocking(move || blobs.stored_bytes())
            .await
            .map_err(ApiError::internal)?
    };
    let quota = state.config.max_context_bytes_per_owner;
    let room = quota.saturating_sub(used);
    let quota_error = || {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "context_quota_exceeded",
            format!(
                "blob {digest}: your stored build-context files take {used} of your {quota} bytes; they are collected when unused, or ask the operator for more"
            ),
        )
    };
    if room == 0 {
        return Err(quota_error());
    }
    let limited_by_quota = room < state.config.max_upload_bytes;
    let mut upload = blobs
        .upload(parsed, room.min(state.config.max_upload_bytes))
        .map_err(ApiError::internal)?;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::file_upload(format!("blob {digest}: the upload was interrupted: {e}"))
        })?;
        upload.write(&chunk).map_err(|e| match e {
            UploadError::TooLarge { .. } if limited_by_quota => quota_error(),
            other => upload_error(&digest, other),
        })?;
    }
    let size = upload.commit().map_err(|e| upload_error(&digest, e))?;
    if let Some(objects) = state.runner.objects() {
        // Workers on other hosts read it from there.
        let digest_parsed = parse_digest(&digest).map_err(|e| ApiError::invalid("digest", e))?;
        let path = blobs.path(&digest_parsed);
        objects
            .put_context_blob(&owner, &digest, &path)
            .await
            .map_err(|e| {
                // Not kept here either: `missing` reports it again and the client re-sends it.
                let _ = std::fs::remove_file(&path);
                ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    "object_storage_failed",
                    format!("blob {digest}: sharing it with the build workers failed: {e}"),
                )
            })?;
    }
    Ok((StatusCode::CREATED, Json(UploadedBlob { digest, size })))
}

fn upload_error(digest: &str, error: UploadError) -> ApiError {
    match error {
        UploadError::TooLarge { .. } => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "file_upload_limit_exceeded",
            format!("blob {digest}: {error}"),
        ),
        UploadError::DigestMismatch { .. } => ApiError::new(
            StatusCode::CONFLICT,
            "upload_conflict",
            format!("blob {digest}: {error}"),
        ),
        UploadError::Io(error) => ApiError::internal(format!("blob {digest}: {error}")),
    }
}
