//! Resolving a reference to one platform's manifest and config.

use reqwest::header::CONTENT_TYPE;
use reqwest::Response;

use super::request::RegistryGet;
use super::{Endpoint, RegistryClient};
use backon::Retryable as _;

use crate::auth::Credentials;
use crate::config::MAX_CONFIG_BYTES;
use crate::digest::Digest;
use crate::error::Error;
use crate::http_body::read_limited;
use crate::manifest::{parse_manifest, Descriptor, ImageManifest, Manifest, MAX_MANIFEST_BYTES};
use crate::media_types::MANIFEST_ACCEPT;
use crate::platform::{self, Platform};
use crate::reference::Reference;
use crate::resolved::{check_config_blob, ImageSource, ResolvedImage};

/// A fetched manifest body.
struct RawManifest {
    bytes: Vec<u8>,
    content_type: Option<String>,
    digest: Digest,
}

impl RegistryClient {
    /// Resolves `reference` to the manifest for `platform` (see [`crate::platform`] for the
    /// rules), fetching and verifying the manifest(s) and the config. Mirrors are tried first,
    /// in order; the registry itself last.
    pub async fn resolve(
        &self,
        reference: &Reference,
        credentials: &Credentials,
        platform: &Platform,
    ) -> Result<ResolvedImage, Error> {
        let endpoints = self.endpoints(reference)?;
        let mut last = None;
        for ep in &endpoints {
            match self.resolve_at(ep, reference, credentials, platform).await {
                Ok(r) => return Ok(r),
                Err(e) if ep.mirror => {
                    tracing::warn!(mirror = %ep.base, reference = %reference, error = %e, "mirror failed; trying the next endpoint");
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| Error::Config(format!("no endpoint for {reference}"))))
    }

    async fn resolve_at(
        &self,
        ep: &Endpoint,
        reference: &Reference,
        credentials: &Credentials,
        wanted: &Platform,
    ) -> Result<ResolvedImage, Error> {
        let what = reference.to_string();
        let repo = reference.repository.as_str();
        let top = self
            .fetch_manifest(
                ep,
                repo,
                &reference.manifest_reference(),
                reference.digest.as_ref(),
                credentials,
                &what,
            )
            .await?;
        let (raw, manifest, index_digest) =
            match parse_manifest(&top.bytes, top.content_type.as_deref(), &what)? {
                Manifest::Image(m) => (top, *m, None),
                Manifest::Index(index) => {
                    let chosen = platform::select(&index, wanted).map_err(|nm| {
                        Error::NoMatchingPlatform {
                            what: what.clone(),
                            wanted: wanted.to_string(),
                            offered: nm.offered,
                        }
                    })?;
                    let child_what = format!("{}/{}@{}", reference.registry, repo, chosen.digest);
                    let child = self
                        .fetch_manifest(
                            ep,
                            repo,
                            &chosen.digest.to_string(),
                            Some(&chosen.digest),
                            credentials,
                            &child_what,
                        )
                        .await?;
                    let content_type = child
                        .content_type
                        .clone()
                        .or(Some(chosen.media_type.clone()));
                    match parse_manifest(&child.bytes, content_type.as_deref(), &child_what)? {
                        Manifest::Image(m) => (child, *m, Some(top.digest)),
                        Manifest::Index(_) => {
                            return Err(Error::InvalidManifest {
                                what: child_what,
                                reason: "index entry points to another index".to_owned(),
                            })
                        }
                    }
                }
            };
        let config_raw = self.fetch_config(ep, repo, &manifest, credentials).await?;
        let (config, platform) = check_config_blob(&what, &manifest, &config_raw, wanted)?;
        Ok(ResolvedImage {
            reference: Some(reference.clone()),
            manifest_digest: raw.digest,
            index_digest,
            manifest_raw: raw.bytes,
            manifest,
            config_raw,
            config,
            platform,
            source: ImageSource::Registry {
                endpoint: ep.base.as_str().trim_end_matches('/').to_owned(),
            },
        })
    }

    /// Fetches a manifest; verifies it against `expected` (pull by digest) or against the
    /// registry's `Docker-Content-Digest` header (pull by tag).
    async fn fetch_manifest(
        &self,
        ep: &Endpoint,
        repo: &str,
        manifest_ref: &str,
        expected: Option<&Digest>,
        credentials: &Credentials,
        what: &str,
    ) -> Result<RawManifest, Error> {
        let req = RegistryGet {
            ep,
            repo,
            path: format!("manifests/{manifest_ref}"),
            accept: Some(MANIFEST_ACCEPT),
            range_from: None,
            what: &format!("manifest {what}"),
        };
        let (content_type, header_digest, bytes) = self
            .get_small(&req, credentials, MAX_MANIFEST_BYTES as u64, |resp| {
                let content_type = resp
                    .headers()
                    .get(CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                let header_digest = resp
                    .headers()
                    .get("docker-content-digest")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<Digest>().ok());
                (content_type, header_digest)
            })
            .await
            .map(|((c, h), b)| (c, h, b))?;
        let digest = match expected.or(header_digest.as_ref()) {
            Some(exp) => {
                let actual = exp.same_algorithm_of(&bytes);
                if &actual != exp {
                    return Err(Error::ManifestDigestMismatch {
                        what: what.to_owned(),
                        expected: exp.clone(),
                        actual,
                    });
                }
                Digest::sha256_of(&bytes)
            }
            None => Digest::sha256_of(&bytes),
        };
        Ok(RawManifest {
            bytes,
            content_type,
            digest,
        })
    }

    async fn fetch_config(
        &self,
        ep: &Endpoint,
        repo: &str,
        manifest: &ImageManifest,
        credentials: &Credentials,
    ) -> Result<Vec<u8>, Error> {
        let desc: &Descriptor = &manifest.config;
        if desc.size > MAX_CONFIG_BYTES {
            return Err(Error::TooLarge {
                what: format!("image config {}", desc.digest),
                limit: MAX_CONFIG_BYTES,
            });
        }
        let what = format!("blob {}", desc.digest);
        let req = RegistryGet {
            ep,
            repo,
            path: format!("blobs/{}", desc.digest),
            accept: None,
            range_from: None,
            what: &what,
        };
        // Verified (digest and size) by `check_config_blob`.
        let ((), bytes) = self.get_small(&req, credentials, desc.size, |_| ()).await?;
        Ok(bytes)
    }

    /// GETs a small body whole, retrying (bounded) when the transfer breaks; `head` extracts
    /// what is needed from the response headers.
    async fn get_small<T>(
        &self,
        req: &RegistryGet<'_>,
        credentials: &Credentials,
        limit: u64,
        head: impl Fn(&Response) -> T,
    ) -> Result<(T, Vec<u8>), Error> {
        (|| async {
            let resp = self.registry_get(req, credentials).await?;
            let h = head(&resp);
            let bytes = read_limited(resp, limit, &req.ep.host, req.what).await?;
            Ok((h, bytes))
        })
        .retry(self.inner.retry.backoff())
        .when(|e: &Error| matches!(e, Error::Transport { .. }))
        .notify(|e, _| {
            tracing::warn!(registry = %req.ep.host, what = req.what, error = %e, "transfer broke; retrying");
        })
        .await
    }
}
