//! Blob downloads into the [`BlobStore`]: verified while streaming, resumed with `Range` when
//! a transfer breaks, foreign layers fetched from their `urls`.

use std::path::PathBuf;

use reqwest::header::CONTENT_RANGE;
use reqwest::{Response, Url};
use tokio::io::{AsyncSeekExt, AsyncWriteExt};

use super::request::{describe, RegistryGet};
use super::{Endpoint, RegistryClient};
use crate::auth::Credentials;
use crate::digest::Hasher;
use crate::error::Error;
use crate::manifest::Descriptor;
use crate::resolved::{ImageSource, ResolvedImage};
use crate::store::BlobStore;

/// Where one download attempt goes.
enum Origin<'a> {
    Registry(&'a Endpoint, &'a str),
    Url(Url),
}

impl RegistryClient {
    /// Downloads the blob `descriptor` of `image` into `store` and returns its path. A no-op
    /// when the store already has it. `progress` is called with the bytes received so far.
    ///
    /// The endpoint that served the manifest is tried first, then the other endpoints, then
    /// (for layers that carry them) the descriptor's `urls`.
    pub async fn fetch_blob(
        &self,
        image: &ResolvedImage,
        descriptor: &Descriptor,
        credentials: &Credentials,
        store: &BlobStore,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<PathBuf, Error> {
        if store.contains_sized(&descriptor.digest, descriptor.size) {
            progress(descriptor.size);
            return Ok(store.path(&descriptor.digest));
        }
        self.fetch_blob_fresh(image, descriptor, credentials, store, progress)
            .await
    }

    /// Like [`RegistryClient::fetch_blob`], but downloads (and verifies) the blob even when the
    /// store has it: the caller must know that `credentials` give access to it, not only that
    /// someone once stored content with this digest.
    pub async fn fetch_blob_fresh(
        &self,
        image: &ResolvedImage,
        descriptor: &Descriptor,
        credentials: &Credentials,
        store: &BlobStore,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<PathBuf, Error> {
        let Some(reference) = &image
            .reference
            .as_ref()
            .filter(|_| matches!(image.source, ImageSource::Registry { .. }))
        else {
            return Err(Error::NotFound {
                registry: "local image".to_owned(),
                what: format!("blob {}", descriptor.digest),
            });
        };
        let mut endpoints = self.endpoints(reference)?;
        if let ImageSource::Registry { endpoint } = &image.source {
            // The endpoint that served the manifest goes first.
            endpoints.sort_by_key(|ep| ep.base.as_str().trim_end_matches('/') != endpoint);
        }
        let mut last_err = None;
        for ep in &endpoints {
            let origin = Origin::Registry(ep, &reference.repository);
            match self
                .download(origin, descriptor, credentials, store, progress)
                .await
            {
                Ok(p) => return Ok(p),
                Err(e) => {
                    tracing::warn!(registry = %ep.host, digest = %descriptor.digest, error = %e, "blob download failed");
                    last_err = Some(e);
                }
            }
        }
        for u in &descriptor.urls {
            let Ok(url) = Url::parse(u) else {
                tracing::warn!(url = %u, "skipping malformed layer url");
                continue;
            };
            match self
                .download(Origin::Url(url), descriptor, credentials, store, progress)
                .await
            {
                Ok(p) => return Ok(p),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| Error::NotFound {
            registry: reference.registry.clone(),
            what: format!("blob {}", descriptor.digest),
        }))
    }

    async fn open(
        &self,
        origin: &Origin<'_>,
        d: &Descriptor,
        credentials: &Credentials,
        from: u64,
    ) -> Result<Response, Error> {
        let what = format!("blob {}", d.digest);
        let range_from = (from > 0).then_some(from);
        match origin {
            Origin::Registry(ep, repo) => {
                let req = RegistryGet {
                    ep,
                    repo,
                    path: format!("blobs/{}", d.digest),
                    accept: None,
                    range_from,
                    what: &what,
                };
                self.registry_get(&req, credentials).await
            }
            Origin::Url(url) => self.plain_get(url, range_from, &what).await,
        }
    }

    async fn download(
        &self,
        origin: Origin<'_>,
        d: &Descriptor,
        credentials: &Credentials,
        store: &BlobStore,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<PathBuf, Error> {
        let registry = match &origin {
            Origin::Registry(ep, _) => ep.host.clone(),
            Origin::Url(u) => crate::registry_config::url_host_port(u),
        };
        let what = format!("blob {}", d.digest);
        let tmp = store.temp_file()?;
        let std_file = tmp.reopen().map_err(|e| Error::io(tmp.path(), e))?;
        let mut file = tokio::fs::File::from_std(std_file);
        let io_err = |e| Error::io(tmp.path(), e);
        let mut hasher = Hasher::new(d.digest.algorithm());
        let mut written: u64 = 0;
        let mut delays = self.inner.retry.delays();
        loop {
            let mut resp = self.open(&origin, d, credentials, written).await?;
            let resumed =
                resp.status().as_u16() == 206 && content_range_start(&resp) == Some(written);
            if !resumed && written > 0 {
                tracing::debug!(%registry, digest = %d.digest, "server ignored range; restarting from zero");
                file.set_len(0).await.map_err(io_err)?;
                file.seek(std::io::SeekFrom::Start(0))
                    .await
                    .map_err(io_err)?;
                hasher = Hasher::new(d.digest.algorithm());
                written = 0;
            }
            let failure = loop {
                match resp.chunk().await {
                    Ok(Some(chunk)) => {
                        let len = chunk.len() as u64;
                        if written + len > d.size {
                            return Err(Error::BlobSizeMismatch {
                                digest: d.digest.clone(),
                                expected: d.size,
                                actual: written + len,
                            });
                        }
                        file.write_all(&chunk).await.map_err(io_err)?;
                        hasher.update(&chunk);
                        written += len;
                        progress(written);
                    }
                    Ok(None) if written == d.size => break None,
                    Ok(None) => {
                        break Some(format!(
                            "connection closed after {written} of {} bytes",
                            d.size
                        ))
                    }
                    Err(e) => break Some(describe(e)),
                }
            };
            let Some(reason) = failure else { break };
            let Some(delay) = delays.next() else {
                return Err(Error::Transport {
                    registry,
                    what,
                    reason,
                });
            };
            tracing::warn!(%registry, digest = %d.digest, bytes = written, %reason, "transfer broke; resuming");
            tokio::time::sleep(delay).await;
        }
        let actual = hasher.finish();
        if actual != d.digest {
            return Err(Error::BlobDigestMismatch {
                digest: d.digest.clone(),
                actual,
            });
        }
        file.flush().await.map_err(io_err)?;
        file.sync_all().await.map_err(io_err)?;
        drop(file);
        store.commit(tmp, &d.digest)
    }
}

/// The first byte position of a `Content-Range: bytes <start>-<end>/<total>` header.
fn content_range_start(resp: &Response) -> Option<u64> {
    let v = resp.headers().get(CONTENT_RANGE)?.to_str().ok()?;
    let rest = v.trim().strip_prefix("bytes ")?;
    rest.split('-').next()?.trim().parse().ok()
}
