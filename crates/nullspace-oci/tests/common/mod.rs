//! Test fixtures: a deliberately faulty in-process registry and image builders.
#![allow(
    dead_code,
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::type_complexity
)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use nullspace_oci::{Digest, Platform, RegistryClient, RegistryConfig, RetryPolicy};
use serde_json::json;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// An image built for tests.
#[derive(Clone)]
pub struct TestImage {
    pub config: Vec<u8>,
    pub layers: Vec<Vec<u8>>,
    pub manifest: Vec<u8>,
}

impl TestImage {
    pub fn new(
        platform: &Platform,
        extra_config: serde_json::Value,
        layer_sizes: &[usize],
    ) -> TestImage {
        let layers: Vec<Vec<u8>> = layer_sizes
            .iter()
            .enumerate()
            .map(|(i, n)| (0..*n).map(|j| ((j * 31 + i * 7) % 251) as u8).collect())
            .collect();
        let mut config = json!({
            "architecture": platform.architecture,
            "os": platform.os,
            "config": {"Env": ["PATH=/usr/bin"], "Cmd": ["sh"]},
            "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| Digest::sha256_of(l).to_string()).collect::<Vec<_>>()},
        });
        if let (Some(obj), Some(extra)) = (config.as_object_mut(), extra_config.as_object()) {
            for (k, v) in extra {
                obj.insert(k.clone(), v.clone());
            }
        }
        let config = serde_json::to_vec(&config).unwrap();
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": desc(OCI_CONFIG, &config),
            "layers": layers.iter().map(|l| desc(LAYER, l)).collect::<Vec<_>>(),
        });
        TestImage {
            config,
            layers,
            manifest: serde_json::to_vec(&manifest).unwrap(),
        }
    }

    pub fn manifest_digest(&self) -> Digest {
        Digest::sha256_of(&self.manifest)
    }
}

pub fn desc(media_type: &str, bytes: &[u8]) -> serde_json::Value {
    json!({"mediaType": media_type, "digest": Digest::sha256_of(bytes).to_string(), "size": bytes.len()})
}

pub fn index_of(entries: Vec<serde_json::Value>) -> Vec<u8> {
    serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}))
        .unwrap()
}

pub fn index_entry(manifest: &[u8], platform: serde_json::Value) -> serde_json::Value {
    let mut d = desc(OCI_MANIFEST, manifest);
    d["platform"] = platform;
    d
}

/// How the registry authenticates.
#[derive(Clone, Default)]
pub enum AuthMode {
    #[default]
    None,
    /// Basic auth with these credentials.
    Basic(String, String),
    /// Bearer tokens from `/token`, which wants these basic credentials (or none).
    Token(Option<(String, String)>),
}

/// Faults to inject.
#[derive(Default)]
pub struct Faults {
    /// Answer this many requests (any path under /v2/ except /v2/) with 503 first.
    pub fail_5xx: AtomicU32,
    /// Drop this many blob transfers after half their bytes.
    pub drop_blob: AtomicU32,
    /// Whether blob requests honour `Range`.
    pub support_range: bool,
    /// Redirect blob requests to `/storage/` on `localhost` (another host name).
    pub redirect_blobs: bool,
}

#[derive(Default)]
pub struct Stats {
    pub token_requests: AtomicUsize,
    pub range_requests: AtomicUsize,
    pub blob_requests: AtomicUsize,
    /// Authorization headers seen by `/storage/`.
    pub storage_auth: Mutex<Vec<String>>,
}

#[derive(Default)]
pub struct Registry {
    /// (repo, reference) → (content type, bytes).
    pub manifests: Mutex<HashMap<(String, String), (String, Vec<u8>)>>,
    /// digest → bytes served (may be corrupt on purpose).
    pub blobs: Mutex<HashMap<String, Vec<u8>>>,
    /// digest → bytes served under /external/ (foreign layers).
    pub external: Mutex<HashMap<String, Vec<u8>>>,
    pub auth: AuthMode,
    pub faults: Faults,
    pub stats: Stats,
    pub addr: Mutex<Option<SocketAddr>>,
}

impl Registry {
    pub fn new(auth: AuthMode, faults: Faults) -> Arc<Registry> {
        Arc::new(Registry {
            auth,
            faults,
            ..Default::default()
        })
    }

    pub fn put_manifest(&self, repo: &str, reference: &str, content_type: &str, bytes: &[u8]) {
        let mut m = self.manifests.lock().unwrap();
        m.insert(
            (repo.into(), reference.into()),
            (content_type.into(), bytes.to_vec()),
        );
        m.insert(
            (repo.into(), Digest::sha256_of(bytes).to_string()),
            (content_type.into(), bytes.to_vec()),
        );
    }

    pub fn put_blob(&self, bytes: &[u8]) {
        self.blobs
            .lock()
            .unwrap()
            .insert(Digest::sha256_of(bytes).to_string(), bytes.to_vec());
    }

    pub fn put_image(&self, repo: &str, tag: &str, img: &TestImage) {
        self.put_manifest(repo, tag, OCI_MANIFEST, &img.manifest);
        self.put_blob(&img.config);
        for l in &img.layers {
            self.put_blob(l);
        }
    }

    pub fn host(&self) -> String {
        self.addr
            .lock()
            .unwrap()
            .map(|a| a.to_string())
            .unwrap_or_default()
    }

    /// Starts serving on 127.0.0.1:0.
    pub async fn start(self: &Arc<Self>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        *self.addr.lock().unwrap() = Some(addr);
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(self.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        addr.to_string()
    }
}

pub fn client() -> RegistryClient {
    RegistryClient::with_retry(
        RegistryConfig::default(),
        RetryPolicy {
            max_attempts: 5,
            base_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(50),
        },
    )
    .unwrap()
}

fn basic_value(u: &str, p: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
    )
}

fn status(code: StatusCode) -> Response {
    code.into_response()
}

async fn handle(State(reg): State<Arc<Registry>>, req: Request) -> Response {
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or_default().to_owned();
    let headers = req.headers().clone();
    let auth_header = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    if path == "/token" {
        reg.stats.token_requests.fetch_add(1, Ordering::SeqCst);
        if let AuthMode::Token(Some((u, p))) = &reg.auth {
            if auth_header != basic_value(u, p) {
                return status(StatusCode::UNAUTHORIZED);
            }
        }
        assert!(
            query.contains("scope=repository"),
            "token request without scope: {query}"
        );
        // Alternate token / access_token to exercise both.
        return (
            [(header::CONTENT_TYPE, "application/json")],
            json!({"access_token": "good-token", "expires_in": 300}).to_string(),
        )
            .into_response();
    }
    if let Some(digest) = path.strip_prefix("/storage/") {
        reg.stats.storage_auth.lock().unwrap().push(auth_header);
        let body = reg.blobs.lock().unwrap().get(digest).cloned();
        return body.map_or_else(|| status(StatusCode::NOT_FOUND), |b| b.into_response());
    }
    if let Some(digest) = path.strip_prefix("/external/") {
        let body = reg.external.lock().unwrap().get(digest).cloned();
        return body.map_or_else(|| status(StatusCode::NOT_FOUND), |b| b.into_response());
    }
    let Some(rest) = path.strip_prefix("/v2/") else {
        return status(StatusCode::NOT_FOUND);
    };
    // Auth.
    let host = reg.host();
    match &reg.auth {
        AuthMode::None => {}
        AuthMode::Basic(u, p) => {
            if auth_header != basic_value(u, p) {
                return (
                    StatusCode::UNAUTHORIZED,
                    [(header::WWW_AUTHENTICATE, "Basic realm=\"fake\"")],
                )
                    .into_response();
            }
        }
        AuthMode::Token(_) => {
            if auth_header != "Bearer good-token" {
                let repo = rest
                    .split("/manifests/")
                    .next()
                    .unwrap_or_default()
                    .split("/blobs/")
                    .next()
                    .unwrap_or_default();
                let chal = format!("Bearer realm=\"http://{host}/token\",service=\"fake\",scope=\"repository:{repo}:pull\"");
                return (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, chal)])
                    .into_response();
            }
        }
    }
    if rest.is_empty() {
        return status(StatusCode::OK);
    }
    if reg.faults.fail_5xx.load(Ordering::SeqCst) > 0 {
        reg.faults.fail_5xx.fetch_sub(1, Ordering::SeqCst);
        return status(StatusCode::SERVICE_UNAVAILABLE);
    }
    if let Some((repo, reference)) = rest.split_once("/manifests/") {
        let m = reg
            .manifests
            .lock()
            .unwrap()
            .get(&(repo.to_owned(), reference.to_owned()))
            .cloned();
        return match m {
            Some((ct, bytes)) => ([(header::CONTENT_TYPE, ct)], bytes).into_response(),
            None => status(StatusCode::NOT_FOUND),
        };
    }
    if let Some((_repo, digest)) = rest.split_once("/blobs/") {
        reg.stats.blob_requests.fetch_add(1, Ordering::SeqCst);
        let Some(bytes) = reg.blobs.lock().unwrap().get(digest).cloned() else {
            return status(StatusCode::NOT_FOUND);
        };
        if reg.faults.redirect_blobs {
            let port = reg
                .addr
                .lock()
                .unwrap()
                .map(|a| a.port())
                .unwrap_or_default();
            return (
                StatusCode::TEMPORARY_REDIRECT,
                [(
                    header::LOCATION,
                    format!("http://localhost:{port}/storage/{digest}"),
                )],
            )
                .into_response();
        }
        return serve_blob(&reg, &headers, bytes);
    }
    status(StatusCode::NOT_FOUND)
}

fn serve_blob(reg: &Registry, headers: &HeaderMap, bytes: Vec<u8>) -> Response {
    let total = bytes.len();
    let mut start = 0;
    let mut code = StatusCode::OK;
    if let Some(r) = headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        reg.stats.range_requests.fetch_add(1, Ordering::SeqCst);
        if reg.faults.support_range {
            start = r
                .trim_start_matches("bytes=")
                .trim_end_matches('-')
                .parse()
                .unwrap_or(0);
            code = StatusCode::PARTIAL_CONTENT;
        }
    }
    let slice = Bytes::from(bytes[start.min(total)..].to_vec());
    let len = slice.len();
    let drop_now = reg.faults.drop_blob.load(Ordering::SeqCst) > 0;
    let body = if drop_now {
        reg.faults.drop_blob.fetch_sub(1, Ordering::SeqCst);
        let half = slice.slice(..len / 2);
        // Half the bytes, a pause so they reach the client, then a broken connection.
        let stream = futures_util::stream::unfold(0u8, move |step| {
            let half = half.clone();
            async move {
                match step {
                    0 => Some((Ok::<Bytes, std::io::Error>(half), 1)),
                    1 => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        Some((
                            Err(std::io::Error::new(
                                std::io::ErrorKind::ConnectionReset,
                                "injected drop",
                            )),
                            2,
                        ))
                    }
                    _ => None,
                }
            }
        });
        Body::from_stream(stream)
    } else {
        Body::from(slice)
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = code;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_LENGTH, len.into());
    if reg.faults.support_range {
        h.insert(header::ACCEPT_RANGES, "bytes".parse().unwrap());
    }
    if code == StatusCode::PARTIAL_CONTENT {
        h.insert(
            header::CONTENT_RANGE,
            format!("bytes {start}-{}/{total}", total.saturating_sub(1))
                .parse()
                .unwrap(),
        );
    }
    resp
}
