//! An in-process registry on loopback that serves what a hostile tenant would: crafted layers,
//! redirects and auth realms aimed at the host, oversized token responses, bodies that drip.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use sha2::{Digest as _, Sha256};

const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// `sha256:<hex>` of `bytes`.
pub fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// How a repository misbehaves.
#[derive(Clone, Default)]
pub enum Behaviour {
    /// Serves its manifests and blobs.
    #[default]
    Plain,
    /// Wants HTTP basic auth with these credentials.
    Basic(String, String),
    /// Sends blobs one byte per second.
    Drip,
    /// Redirects blob requests to this URL.
    RedirectBlobs(String),
    /// Demands a bearer token from this realm.
    BearerRealm(String),
}

#[derive(Default)]
struct Repo {
    manifests: HashMap<String, Vec<u8>>,
    blobs: HashMap<String, Bytes>,
    behaviour: Behaviour,
}

/// The registry.
#[derive(Default)]
pub struct HostileRegistry {
    repos: Mutex<HashMap<String, Repo>>,
}

impl HostileRegistry {
    /// Puts an image (gzip layers, amd64 linux config without diff_ids or Cmd) at `repo:latest`;
    /// returns the layer digests.
    pub fn put_image(&self, repo: &str, behaviour: Behaviour, layers: Vec<Vec<u8>>) -> Vec<String> {
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            // No Cmd: these layer-only images have no shell to run one, so their templates
            // are rootfs-only (no build VM).
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": []},
        }))
        .unwrap_or_default();
        let descriptors: Vec<serde_json::Value> = layers
            .iter()
            .map(|l| serde_json::json!({"mediaType": LAYER, "digest": digest(l), "size": l.len()}))
            .collect();
        self.put_manifest(repo, behaviour, &config, descriptors);
        let mut repos = self.repos.lock().unwrap_or_else(|p| p.into_inner());
        let entry = repos.entry(repo.to_owned()).or_default();
        let mut digests = Vec::new();
        for layer in layers {
            digests.push(digest(&layer));
            entry.blobs.insert(digest(&layer), Bytes::from(layer));
        }
        digests
    }

    /// Puts a manifest listing `layers` (descriptors; the blobs may live elsewhere) and its
    /// config at `repo:latest`.
    pub fn put_manifest(
        &self,
        repo: &str,
        behaviour: Behaviour,
        config: &[u8],
        layers: Vec<serde_json::Value>,
    ) {
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "config": {"mediaType": CONFIG, "digest": digest(config), "size": config.len()},
            "layers": layers,
        }))
        .unwrap_or_default();
        let mut repos = self.repos.lock().unwrap_or_else(|p| p.into_inner());
        let entry = repos.entry(repo.to_owned()).or_default();
        entry.behaviour = behaviour;
        entry.manifests.insert("latest".into(), manifest.clone());
        entry.manifests.insert(digest(&manifest), manifest);
        entry
            .blobs
            .insert(digest(config), Bytes::copy_from_slice(config));
    }

    /// Serves on a loopback port; returns `127.0.0.1:<port>`.
    pub async fn start(self: &Arc<Self>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let address = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(self.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        address
    }
}

async fn handle(State(registry): State<Arc<HostileRegistry>>, request: Request) -> Response {
    let path = request.uri().path().to_owned();
    let head = request.method() == axum::http::Method::HEAD;
    if path == "/v2/" || path == "/v2" {
        return StatusCode::OK.into_response();
    }
    if path == "/big-token" {
        // 8 MiB of JSON: a token service that never ends its answer.
        let filler = "A".repeat(8 << 20);
        return (
            [(header::CONTENT_TYPE, "application/json")],
            format!("{{\"token\":\"{filler}\"}}"),
        )
            .into_response();
    }
    let Some(rest) = path.strip_prefix("/v2/") else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let (repo, kind, reference) = if let Some((repo, r)) = rest.split_once("/manifests/") {
        (repo, "manifests", r)
    } else if let Some((repo, r)) = rest.split_once("/blobs/") {
        (repo, "blobs", r)
    } else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let (behaviour, body) = {
        let repos = registry.repos.lock().unwrap_or_else(|p| p.into_inner());
        let Some(entry) = repos.get(repo) else {
            return StatusCode::NOT_FOUND.into_response();
        };
        let body = if kind == "manifests" {
            entry
                .manifests
                .get(reference)
                .map(|m| Bytes::from(m.clone()))
        } else {
            entry.blobs.get(reference).cloned()
        };
        (entry.behaviour.clone(), body)
    };
    match &behaviour {
        Behaviour::Basic(user, password) => {
            let expected = format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
            );
            if header_value(request.headers(), header::AUTHORIZATION) != Some(expected) {
                return (
                    StatusCode::UNAUTHORIZED,
                    [(header::WWW_AUTHENTICATE, "Basic realm=\"hostile\"")],
                )
                    .into_response();
            }
        }
        Behaviour::BearerRealm(realm) => {
            return (
                StatusCode::UNAUTHORIZED,
                [(
                    header::WWW_AUTHENTICATE,
                    format!("Bearer realm=\"{realm}\",service=\"hostile\",scope=\"repository:{repo}:pull\""),
                )],
            )
                .into_response();
        }
        Behaviour::RedirectBlobs(target) if kind == "blobs" => {
            return (
                StatusCode::TEMPORARY_REDIRECT,
                [(header::LOCATION, target.clone())],
            )
                .into_response();
        }
        _ => {}
    }
    let Some(body) = body else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let content_type = if kind == "manifests" {
        MANIFEST
    } else {
        "application/octet-stream"
    };
    let headers = [
        (header::CONTENT_TYPE, content_type.to_owned()),
        (header::CONTENT_LENGTH, body.len().to_string()),
        (
            "docker-content-digest".parse().unwrap_or(header::ETAG),
            digest(&body),
        ),
    ];
    if head {
        return (headers, Body::empty()).into_response();
    }
    if matches!(behaviour, Behaviour::Drip) && kind == "blobs" {
        let stream = futures_util::stream::unfold(0usize, move |i| {
            let body = body.clone();
            async move {
                if i >= body.len() {
                    return None;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                Some((Ok::<_, std::io::Error>(body.slice(i..i + 1)), i + 1))
            }
        });
        return (headers, Body::from_stream(stream)).into_response();
    }
    (headers, body).into_response()
}

fn header_value(headers: &HeaderMap, name: header::HeaderName) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// A ustar header block.
pub fn tar_header(name: &str, kind: u8, size: u64) -> [u8; 512] {
    let mut h = tar::Header::new_ustar();
    let _ = h.set_path(name);
    h.set_entry_type(tar::EntryType::new(kind));
    h.set_size(size);
    h.set_mode(0o644);
    h.set_cksum();
    *h.as_bytes()
}

/// Gzips what `write` produces (fast level: the raw streams are mostly zeros).
pub fn gzip(write: impl FnOnce(&mut dyn Write)) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    write(&mut encoder);
    encoder.finish().unwrap_or_default()
}

/// Writes `bytes` zero bytes.
pub fn zeros(out: &mut dyn Write, mut bytes: u64) {
    let block = vec![0u8; 1 << 20];
    while bytes > 0 {
        let n = bytes.min(block.len() as u64) as usize;
        let _ = out.write_all(&block[..n]);
        bytes -= n as u64;
    }
}

/// A small valid layer holding `/file` with `content`.
pub fn small_layer(content: &[u8]) -> Vec<u8> {
    gzip(|out| {
        let _ = out.write_all(&tar_header("file", b'0', content.len() as u64));
        let mut data = content.to_vec();
        data.resize(content.len().div_ceil(512) * 512, 0);
        let _ = out.write_all(&data);
        zeros(out, 1024);
    })
}
