//! Published artifacts, build-context blobs and registry layer blobs on S3-compatible object
//! storage, so that a template built on one host is usable on every other (`object_store`).
//!
//! - [`artifacts`]: artifact dirs as content-addressed chunks plus a manifest, sent without
//!   their holes and checked chunk by chunk on download;
//! - [`blobs`]: whole blobs keyed by digest: build-context blobs per owner, and layer blobs
//!   shared by all owners but usable by one only after its own verified registry download.

mod artifacts;
mod blobs;

pub use artifacts::{ArtifactManifest, Chunk, ManifestEntry, TransferReport};

use std::path::{Path, PathBuf};
use std::sync::Arc;

use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, PutPayload};
use sha2::{Digest as _, Sha256};

/// Bytes per chunk (and the alignment of chunk offsets).
pub const CHUNK_SIZE: u64 = 4 << 20;
/// Chunks in flight at once (upload or download): bounds memory to this many chunks.
const PARALLEL: usize = 8;
/// Largest manifest accepted on download.
const MAX_MANIFEST_BYTES: usize = 16 << 20;

/// An object storage failure.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The store's URL or settings are unusable.
    #[error("object storage {url}: {message}")]
    Config {
        /// The URL given.
        url: String,
        /// What is wrong.
        message: String,
    },
    /// The service failed or refused.
    #[error("object storage {key}: {message}")]
    Service {
        /// The object.
        key: String,
        /// The service's error.
        message: String,
    },
    /// A local file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Downloaded content does not match its digest, or a manifest is malformed.
    #[error("object storage {key}: {message}")]
    Corrupt {
        /// The object.
        key: String,
        /// What does not match.
        message: String,
    },
}

fn io_at(path: &Path) -> impl Fn(std::io::Error) -> StorageError + '_ {
    move |source| StorageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// An S3-compatible (or local-directory) object store holding artifacts and blobs.
#[derive(Clone, Debug)]
pub struct ObjectStorage {
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    url: String,
}

fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn hex_of(digest: &str) -> Result<&str, String> {
    let hex = digest
        .strip_prefix("sha256:")
        .ok_or_else(|| format!("{digest:?} is not a sha256 digest"))?;
    if hex.len() != 64
        || !hex
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    {
        return Err(format!("{digest:?} is not a sha256 digest"));
    }
    Ok(hex)
}

impl ObjectStorage {
    /// Opens `url`: `s3://bucket[/prefix]` (credentials, region and `AWS_ENDPOINT_URL` from the
    /// usual `AWS_*` variables, which the operator sets) or `file:///dir[/prefix]`.
    /// `endpoint` overrides the S3 endpoint (`http://` is allowed for it).
    pub fn open(url: &str, endpoint: Option<&str>) -> Result<ObjectStorage, StorageError> {
        let config = |message: String| StorageError::Config {
            url: url.to_string(),
            message,
        };
        let parsed = url::Url::parse(url).map_err(|e| config(e.to_string()))?;
        let (store, prefix): (Arc<dyn ObjectStore>, String) = match parsed.scheme() {
            "s3" => {
                let bucket = parsed
                    .host_str()
                    .filter(|b| !b.is_empty())
                    .ok_or_else(|| config("no bucket: use s3://bucket[/prefix]".into()))?;
                let mut builder = object_store::aws::AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .with_virtual_hosted_style_request(false);
                if let Some(endpoint) = endpoint {
                    builder = builder
                        .with_endpoint(endpoint)
                        .with_allow_http(endpoint.starts_with("http://"));
                }
                let store = builder.build().map_err(|e| config(e.to_string()))?;
                (Arc::new(store), parsed.path().trim_matches('/').to_string())
            }
            "file" => {
                let root = parsed
                    .to_file_path()
                    .map_err(|()| config("not a local path".into()))?;
                std::fs::create_dir_all(&root).map_err(|e| config(e.to_string()))?;
                let store = object_store::local::LocalFileSystem::new_with_prefix(&root)
                    .map_err(|e| config(e.to_string()))?;
                (Arc::new(store), String::new())
            }
            other => {
                return Err(config(format!(
                    "unsupported scheme {other:?}: use s3:// or file://"
                )))
            }
        };
        Ok(ObjectStorage {
            store,
            prefix: ObjectPath::from(prefix),
            url: url.to_string(),
        })
    }

    /// The URL it was opened with.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn key(&self, parts: &[&str]) -> ObjectPath {
        let mut path = self.prefix.clone();
        for part in parts {
            path = path.child(*part);
        }
        path
    }

    fn service(key: &ObjectPath) -> impl Fn(object_store::Error) -> StorageError + '_ {
        move |error| StorageError::Service {
            key: key.to_string(),
            message: error.to_string(),
        }
    }

    async fn exists(&self, key: &ObjectPath) -> Result<bool, StorageError> {
        match self.store.head(key).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(error) => Err(Self::service(key)(error)),
        }
    }

    async fn put(&self, key: &ObjectPath, bytes: Vec<u8>) -> Result<(), StorageError> {
        self.store
            .put(key, PutPayload::from(bytes))
            .await
            .map(|_| ())
            .map_err(Self::service(key))
    }

    async fn get(&self, key: &ObjectPath, limit: usize) -> Result<Vec<u8>, StorageError> {
        let result = self.store.get(key).await.map_err(Self::service(key))?;
        if result.meta.size as u128 > limit as u128 {
            return Err(StorageError::Corrupt {
                key: key.to_string(),
                message: format!("{} bytes, more than the {limit} expected", result.meta.size),
            });
        }
        let bytes = result.bytes().await.map_err(Self::service(key))?;
        Ok(bytes.to_vec())
    }
}

/// A store in the local directory `dir`, for tests.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
fn test_storage(dir: &Path) -> ObjectStorage {
    let url = url::Url::from_directory_path(dir).unwrap();
    ObjectStorage::open(url.as_str(), None).unwrap()
}
