//! Uploading a build context: ask which blobs the server lacks, send only those (all of them
//! when the cache is skipped), 8 at a time, and record in the manifest how each file's blob
//! reached the server (the server's `file_blob` cache entries come from that).

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;

use futures_util::StreamExt as _;

use nullspace_api::request::MissingBlobsBody;
use nullspace_api::response::MissingBlobs;
use nullspace_api::{ContextEntry, UploadStatus};

use crate::error::{io_at, ClientError};
use crate::http::Client;
use crate::scan::LocalContext;

/// Digests asked about in one `missing` question.
const MISSING_BATCH: usize = 50_000;
/// Uploads in flight at once.
const PARALLEL_UPLOADS: usize = 8;

impl Client {
    /// Uploads the blobs of `context` the server lacks (every one with `skip_cache`).
    pub async fn upload_context(
        &self,
        context: &mut LocalContext,
        skip_cache: bool,
    ) -> Result<(), ClientError> {
        let digests: Vec<String> = context
            .manifest
            .file_digests()
            .into_iter()
            .map(str::to_string)
            .collect();
        let mut missing = HashSet::new();
        for chunk in digests.chunks(MISSING_BATCH) {
            let answer: MissingBlobs = self
                .call(
                    reqwest::Method::POST,
                    "/v1/templates/build-context/blobs/missing",
                    Some(&MissingBlobsBody {
                        digests: chunk.to_vec(),
                    }),
                )
                .await?;
            missing.extend(answer.missing);
        }
        // Decide per file, then send each needed blob once.
        let mut to_send: BTreeMap<String, PathBuf> = BTreeMap::new();
        for entry in &mut context.manifest.entries {
            let ContextEntry::File {
                path,
                digest,
                upload,
                reason,
                ..
            } = entry
            else {
                continue;
            };
            let forced = *upload == UploadStatus::Forced;
            let needed = skip_cache || forced || missing.contains(digest.as_str());
            if needed {
                let local =
                    context
                        .files
                        .get(path.as_str())
                        .ok_or_else(|| ClientError::FileUpload {
                            path: path.clone(),
                            message: "not in the scanned context".into(),
                        })?;
                to_send
                    .entry(digest.clone())
                    .or_insert_with(|| local.clone());
            }
            (*upload, *reason) = match (skip_cache, forced, needed) {
                (true, _, _) => (UploadStatus::Forced, Some("whole_build_skip_cache".into())),
                (false, true, _) => (UploadStatus::Forced, Some("force_upload".into())),
                (false, false, true) => (UploadStatus::Uploaded, None),
                (false, false, false) => (UploadStatus::Reused, None),
            };
        }
        let uploads = to_send.into_iter().map(|(digest, local)| async move {
            let file = tokio::fs::File::open(&local).await.map_err(io_at(&local))?;
            let request = self
                .request(
                    reqwest::Method::PUT,
                    &format!("/v1/templates/build-context/blobs/{digest}"),
                )
                .header("content-type", "application/octet-stream")
                .body(reqwest::Body::from(file));
            self.send(request).await.map(|_| ())
        });
        let mut uploads = futures_util::stream::iter(uploads).buffer_unordered(PARALLEL_UPLOADS);
        while let Some(result) = uploads.next().await {
            result?;
        }
        Ok(())
    }
}
