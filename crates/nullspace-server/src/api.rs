//! Routes and handlers. Each handler parses its input into typed values, calls the runner or the
//! store, and renders a view; errors are [`ApiError`]s rendered by [`middleware`].

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Extension, Json, Router};
use futures_util::Stream;
use serde_json::{json, Value};

use nullspace_build::context::{
    parse_digest, ContextBlobs, ContextEntry, ContextManifest, UploadError,
};
use nullspace_build::request::validate_tag;

use crate::auth::ApiKeys;
use crate::entry::LogEntry;
use crate::error::ApiError;
use crate::refs::resolve_ref;
use nullspace_build::declarative::Step;

use crate::request::{
    checked_buildkit_spec, parse_auth, parse_build_request, parse_build_secrets,
    parse_registry_auth, Base, BuildDefinition, RequestSecrets,
};
use crate::runner::Runner;
use crate::store::{status, HistoryFilter};
use crate::view;

/// The OpenAPI document, as kept in the repository.
pub const OPENAPI: &str = include_str!("../openapi.json");

/// Entries returned by one status poll.
const PAGE: usize = 1000;

/// Shared state of the handlers.
#[derive(Clone)]
pub struct AppState {
    /// The build queue.
    pub runner: Arc<Runner>,
    /// API keys.
    pub keys: Arc<ApiKeys>,
    /// With no keys configured and auth disabled, every caller is this owner.
    pub open_owner: Option<String>,
    /// Largest build-context file blob accepted (`NULLSPACE_MAX_UPLOAD_BYTES`).
    pub upload_limit_bytes: u64,
}

/// Default largest file blob: 4 GiB.
const DEFAULT_UPLOAD_LIMIT: u64 = 4 << 30;

/// Build requests carry context manifests, which can be large.
const REQUEST_BODY_LIMIT: usize = 64 << 20;

/// `NULLSPACE_MAX_UPLOAD_BYTES`, else 4 GiB.
pub fn upload_limit_from_env() -> u64 {
    std::env::var("NULLSPACE_MAX_UPLOAD_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&v| v > 0)
        .unwrap_or(DEFAULT_UPLOAD_LIMIT)
}

/// The authenticated caller.
#[derive(Clone, Debug)]
pub struct Owner(pub String);

type ApiResult<T> = Result<T, ApiError>;

/// The router with every route and the middleware.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/openapi.json", get(openapi))
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/v1/templates", get(list_templates))
        .route("/v1/templates/builds", post(create_build))
        .route("/v1/templates/builds/{build_id}", get(get_build))
        .route("/v1/templates/builds/{build_id}/logs", get(stream_logs))
        .route("/v1/templates/builds/{build_id}/cancel", post(cancel_build))
        .route("/v1/templates/builds/{build_id}/retry", post(retry_build))
        .route(
            "/v1/templates/builds/{build_id}/promote",
            post(promote_build),
        )
        .route(
            "/v1/templates/build-context/blobs/missing",
            post(missing_blobs),
        )
        .route(
            "/v1/templates/build-context/blobs/{digest}",
            put(upload_blob).head(has_blob),
        )
        .route("/v1/templates/validate", post(validate))
        .route("/v1/templates/plan", post(plan))
        .route("/v1/templates/refs/{*reference}", get(get_ref))
        .route("/v1/templates/{template}/builds", get(history))
        .route("/v1/templates/{template}/rename", post(rename_template))
        .route(
            "/v1/templates/{template}/tags",
            get(list_tags).post(assign_tag),
        )
        .route(
            "/v1/templates/{template}/tags/{tag}",
            axum::routing::delete(remove_tag),
        )
        .route("/v1/templates/{template}/aliases", post(add_alias))
        .route(
            "/v1/templates/{template}/aliases/{alias}",
            axum::routing::delete(remove_alias),
        )
        .layer(DefaultBodyLimit::max(REQUEST_BODY_LIMIT))
        .fallback(|request: Request| async move { ApiError::no_route(request.uri().path()) })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware,
        ))
        .with_state(state)
}

fn new_request_id() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut rng = rand::thread_rng();
    let suffix: String = (0..16)
        .map(|_| char::from(ALPHABET[rng.gen_range(0..ALPHABET.len())]))
        .collect();
    format!("req_{suffix}")
}

fn render(error: &ApiError, request_id: &str) -> Response {
    (error.status, Json(error.body(request_id))).into_response()
}

/// Authenticates the caller, tags the request with a request id, and renders errors as the
/// envelope.
async fn middleware(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let request_id = new_request_id();
    let path = request.uri().path();
    let public = path == "/openapi.json" || path == "/healthz";
    let mut response = if public {
        next.run(request).await
    } else {
        match authenticate(&state, &request) {
            Ok(owner) => {
                request.extensions_mut().insert(Owner(owner));
                next.run(request).await
            }
            Err(error) => render(&error, &request_id),
        }
    };
    if let Some(error) = response.extensions_mut().remove::<ApiError>() {
        response = render(&error, &request_id);
    } else if matches!(
        response.status().as_u16(),
        400 | 405 | 411 | 413 | 415 | 422
    ) && !is_json(&response)
    {
        // An extractor's own rejection (a body over the limit, say): still the envelope.
        let error = if response.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "file_upload_limit_exceeded",
                format!("the request body is larger than {REQUEST_BODY_LIMIT} bytes"),
            )
        } else {
            ApiError::new(
                response.status(),
                "invalid_request",
                format!("the request was rejected ({})", response.status()),
            )
        };
        response = render(&error, &request_id);
    }
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

fn is_json(response: &Response) -> bool {
    response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json") || v.starts_with("text/event-stream"))
}

fn authenticate(state: &AppState, request: &Request) -> ApiResult<String> {
    if let Some(owner) = &state.open_owner {
        return Ok(owner.clone());
    }
    let header = request
        .headers()
        .get(header::AUTHORIZATION)
        .ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer <api key>"))?;
    let key = header
        .to_str()
        .ok()
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(|| ApiError::unauthorized("expected Authorization: Bearer <api key>"))?;
    state
        .keys
        .owner(key)
        .map(str::to_string)
        .ok_or_else(|| ApiError::unauthorized("invalid API key"))
}

fn json_body(bytes: &Bytes) -> ApiResult<Value> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::invalid_body(format!("the request body is not valid JSON: {e}")))
}

fn only_fields(body: &Value, allowed: &[&str]) -> ApiResult<()> {
    let object = body
        .as_object()
        .ok_or_else(|| ApiError::invalid_body("the request body must be a JSON object"))?;
    match object.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(unknown) => Err(ApiError::invalid(unknown, "unknown field")),
        None => Ok(()),
    }
}

fn query_u64(query: &HashMap<String, String>, name: &str) -> ApiResult<Option<u64>> {
    query
        .get(name)
        .map(|v| {
            v.parse()
                .map_err(|_| ApiError::invalid(name, "must be a non-negative integer"))
        })
        .transpose()
}

fn query_bool(query: &HashMap<String, String>, name: &str) -> ApiResult<bool> {
    match query.get(name).map(String::as_str) {
        None | Some("false") | Some("0") => Ok(false),
        Some("true") | Some("1") | Some("") => Ok(true),
        Some(_) => Err(ApiError::invalid(name, "must be true or false")),
    }
}

/// A template base must name an existing template of the caller.
/// [`check_base`] on a blocking thread (a context can mean many file checks).
async fn check_base_blocking(
    state: &AppState,
    owner: &str,
    definition: &BuildDefinition,
) -> ApiResult<()> {
    if definition.build_context.is_none() && definition.named_contexts.is_empty() {
        return check_base(state, owner, definition);
    }
    let (state, owner, definition) = (state.clone(), owner.to_string(), definition.clone());
    tokio::task::spawn_blocking(move || check_base(&state, &owner, &definition))
        .await
        .map_err(ApiError::internal)?
}

/// Checks what the request refers to in the caller's own state: a template base exists, and
/// every file blob of the build context was uploaded.
fn check_base(state: &AppState, owner: &str, definition: &BuildDefinition) -> ApiResult<()> {
    if let Base::Template { reference } = &definition.base {
        resolve_ref(state.runner.store().as_ref(), owner, reference)?;
    }
    let manifests = definition
        .build_context
        .iter()
        .chain(definition.named_contexts.values());
    for manifest in manifests {
        let blobs = context_blobs(state, owner)?;
        for entry in &manifest.entries {
            if let ContextEntry::File { path, digest, .. } = entry {
                let parsed =
                    parse_digest(digest).map_err(|e| ApiError::invalid("build_context", e))?;
                if !blobs.contains(&parsed) {
                    return Err(ApiError::file_upload(format!(
                        "build context file {path:?}: blob {digest} was not uploaded (ask /v1/templates/build-context/blobs/missing, then PUT it)"
                    )));
                }
            }
        }
    }
    Ok(())
}

fn context_blobs(state: &AppState, owner: &str) -> ApiResult<ContextBlobs> {
    ContextBlobs::open(state.runner.engine().data_dir(), owner).map_err(ApiError::internal)
}

/// Most digests one `missing` question may ask about.
const MAX_MISSING_QUERY: usize = 200_000;

/// `POST /v1/templates/build-context/blobs/missing` `{"digests": [...]}` → the ones the
/// caller has not uploaded, `{"missing": [...]}`.
async fn missing_blobs(
    State(state): State<AppState>,
    Extension(Owner(owner)): Extension<Owner>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let body = json_body(&body)?;
    only_fields(&body, &["digests"])?;
    let list = body
        .get("digests")
        .and_then(Value::as_array)
        .ok_or_else(|| ApiError::invalid("digests", "is required (a list of sha256 digests)"))?;
    if list.len() > MAX_MISSING_QUERY {
        return Err(ApiError::invalid(
            "digests",
            format!(
                "{} digests; at most {MAX_MISSING_QUERY} per call",
                list.len()
            ),
        ));
    }
    let digests = list
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let text = v
                .as_str()
                .ok_or_else(|| ApiError::invalid(&format!("digests[{i}]"), "must be a string"))?;
            parse_digest(text).map_err(|e| ApiError::invalid(&format!("digests[{i}]"), e))
        })
        .collect::<ApiResult<Vec<_>>>()?;
    let blobs = context_blobs(&state, &owner)?;
    // Up to 200k stat calls: off the async workers.
    let missing = tokio::task::spawn_blocking(move || blobs.missing(&digests))
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(json!({ "missing": missing })))
}

/// `HEAD /v1/templates/build-context/blobs/{digest}`: 200 when the caller has it, else 404.
async fn has_blob(
    State(state): State<AppState>,
    Extension(Owner(owner)): Extension<Owner>,
    Path(digest): Path<String>,
) -> ApiResult<StatusCode> {
    let parsed = parse_digest(&digest).map_err(|e| ApiError::invalid("digest", e))?;
    if context_blobs(&state, &owner)?.contains(&parsed) {
        Ok(StatusCode::OK)
    } else {
        Ok(StatusCode::NOT_FOUND)
    }
}

/// `PUT /v1/templates/build-context/blobs/{digest}`: the file's bytes, streamed to disk and
/// hashed on the way; stored only if they hash to `digest`. Uploading a present blob again
/// replaces it (a forced upload).
async fn upload_blob(
    State(state): State<AppState>,
    Extension(Owner(owner)): Extension<Owner>,
    Path(digest): Path<String>,
    body: axum::body::Body,
) -> ApiResult<(StatusCode, Json<Value>)> {
    use futures_util::StreamExt as _;
    let parsed = parse_digest(&digest).map_err(|e| ApiError::invalid("digest", e))?;
    let blobs = context_blobs(&state, &owner)?;
    let mut upload = blobs
        .upload(parsed, state.upload_limit_bytes)
        .map_err(ApiError::internal)?;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::file_upload(format!("blob {digest}: the upload was interrupted: {e}"))
        })?;
        upload.write(&chunk).map_err(|e| upload_error(&digest, e))?;
    }
    let size = upload.commit().map_err(|e| upload_error(&digest, e))?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "digest": digest, "size": size })),
    ))
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

async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI)
}

async fn create_build(
    State(state): State<AppState>,
    Extension(Owner(owner)): Extension<Owner>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let body = json_body(&body)?;
    let (definition, secrets) = parse_build_request(&body)?;
    check_base_blocking(&state, &owner, &definition).await?;
    let record = state.runner.submit(&owner, definition, secrets, None)?;
    Ok((StatusCode::ACCEPTED, Json(view::build(&record))))
}

async fn get_build(
    State(state): State<AppState>,
    Extension(Owner(owner)): Extension<Owner>,
    Path(build_id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    let offset = query_u64(&query, "offset")?.unwrap_or(0);
    let store = state.runner.store();
    let record = store
        .build(Some(&owner), &build_id)?
        .ok_or_else(|| ApiError::build_not_found(&build_id))?;
    let entries = store.entries(&build_id, offset, PAGE)?;
    let next_offset = entries.last().map(|e| e.offset + 1).unwrap_or(offset);
    Ok(Json(json!({
        "build": view::build(&record),
        "entries": entries,
        "next_offset": next_offset,
    })))
}

struct LogStream {
    state: AppState,
    build_id: String,
    offset: u64,
    follow: bool,
    buffer: std::collections::VecDeque<LogEntry>,
    done: bool,
    changes: tokio::sync::watch::Receiver<u64>,
}

impl LogStream {
    async fn next(&mut self) -> Option<LogEntry> {
        loop {
            if let Some(entry) = self.buffer.pop_front() {
                self.offset = entry.offset + 1;
                return Some(entry);
            }
            if self.done {
                return None;
            }
            let store = self.state.runner.store();
            // Read the status before the entries: a terminal status is written together with
            // the final entries, so entries read after seeing it are complete.
            let terminal = match store.build(None, &self.build_id) {
                Ok(Some(record)) => status::is_terminal(&record.status),
                _ => true,
            };
            match store.entries(&self.build_id, self.offset, PAGE) {
                Ok(entries) if !entries.is_empty() => {
                    self.buffer.extend(entries);
                    continue;
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!("log stream {}: {error}", self.build_id);
                    self.done = true;
                    continue;
                }
            }
            if !self.follow || terminal {
                self.done = true;
                continue;
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), self.changes.changed()).await;
        }
    }
}

async fn stream_logs(
    State(state): State<AppState>,
    Extension(Owner(owner)): Extension<Owner>,
    Path(build_id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let offset = match query_u64(&query, "offset")? {
        Some(offset) => offset,
        None => query_u64(&query, "cursor")?.unwrap_or(0),
    };
    let follow = query_bool(&query, "follow")?;
    state
        .runner
        .store()
        .build(Some(&owner), &build_id)?
        .ok_or_else(|| ApiError::build_not_found(&build_id))?;
    let changes = state.runner.subscribe();
    let stream = LogStream {
        state,
        build_id,
        offset,
        follow,
        buffer: Default::default(),
        done: false,
        changes,
    };
    let events = futures_util::stream::unfold(stream, |mut stream| async move {
        let entry = stream.next().await?;
        let event = Event::default()
            .id(entry.offset.to_string())
            .event("log")
            .json_data(&entry)
            .unwrap_or_else(|_| Event::default().comment("unserializable entry"));
        Some((Ok(event), stream))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

async fn cancel_build(
    State(state): State<AppState>,
    Extension(Owner(owner)): Extension<Owner>,
    Path(build_id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let body = json_body(&body)?;
    only_fields(&body, &["reason"])?;
    let reason = match body.get("reason") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(ApiError::invalid("reason", "must be a string")),
    };
    let record = state.runner.cancel(&owner, &build_id, &reason)?;
    Ok(Json(json!({ "build": view::build(&record) })))
}

async fn retry_build(
    State(state): State<AppState>,
    Extension(Owner(owner)): Extension<Owner>,
    Path(build_id): Path<String>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let body = json_body(&body)?;
    only_fields(
        &body,
        &["tags", "base_image_auth", "build_secrets", "registry_auth"],
    )?;
    let original = state
        .runner
        .store()
        .build(Some(&owner), &build_id)?
        .ok_or_else(|| ApiError::build_not_found(&build_id))?;
    let mut definition = original.definition.clone();
    if let Some(tags) = body.get("tags").filter(|t| !t.is_null()) {
        let tags: Vec<String> = match tags {
            Value::String(tag) => vec![tag.clone()],
            Value::Array(items) => items
                .iter()
                .map(|t| {
                    t.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| ApiError::invalid("tags", "must be strings"))
                })
                .collect::<ApiResult<_>>()?,
            _ => {
                return Err(ApiError::invalid(
                    "tags",
                    "must be a string or a list of strings",
                ))
            }
        };
        if tags.is_empty() {
            return Err(ApiError::invalid(
                "tags",
                "must not be empty (leave it out to keep the original tags)",
            ));
        }
        for tag in &tags {
            validate_tag(tag).map_err(|e| ApiError::invalid("tags", e))?;
        }
        definition.tags = tags;
    }
    let auth = match body.get("base_image_auth") {
        Some(value) => parse_auth(value)?,
        None => None,
    };
    match (&original.definition.base_image_auth_kind, &auth) {
        (Some(kind), None) => {
            return Err(ApiError::invalid(
                "base_image_auth",
                format!(
                    "build {build_id} used private base-image credentials ({kind}); stored credentials are never replayed, so a retry needs a fresh base_image_auth"
                ),
            ))
        }
        (None, Some(_)) if matches!(definition.base, Base::Template { .. }) => {
            return Err(ApiError::invalid(
                "base_image_auth",
                "a template base needs no registry credentials",
            ))
        }
        _ => {}
    }
    definition.base_image_auth_kind = auth.as_ref().map(|a| a.0.kind().to_string());
    let build_secrets = parse_build_secrets(body.get("build_secrets").unwrap_or(&Value::Null))?;
    let registry_auth = parse_registry_auth(body.get("registry_auth").unwrap_or(&Value::Null))?;
    let buildkit = definition.build_backend == "buildkit";
    if !buildkit {
        for (field, given) in [
            ("build_secrets", !build_secrets.is_empty()),
            ("registry_auth", !registry_auth.is_empty()),
        ] {
            if given {
                return Err(ApiError::invalid(
                    field,
                    format!("build {build_id} is a native build; only BuildKit builds (dockerfile or steps) use {field}"),
                ));
            }
        }
    }
    let ids: Vec<String> = build_secrets.keys().cloned().collect();
    if !original.definition.build_secret_ids.is_empty()
        && ids != original.definition.build_secret_ids
    {
        return Err(ApiError::invalid(
            "build_secrets",
            format!(
                "build {build_id} used build secrets {:?}; their values are never stored, so a retry must send the same secret ids again",
                original.definition.build_secret_ids
            ),
        ));
    }
    if !original.definition.registry_auth_hosts.is_empty() && registry_auth.is_empty() {
        return Err(ApiError::invalid(
            "registry_auth",
            format!(
                "build {build_id} used registry credentials for {:?}; stored credentials are never replayed, so a retry needs a fresh registry_auth",
                original.definition.registry_auth_hosts
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
        base_image_auth: auth.map(|a| a.0),
        build_secrets,
        registry_auth,
    };
    checked_buildkit_spec(&definition, &secrets)?;
    check_base_blocking(&state, &owner, &definition).await?;
    let record = state
        .runner
        .submit(&owner, definition, secrets, Some(original.id.clone()))?;
    Ok((StatusCode::ACCEPTED, Json(view::build(&record))))
}

async fn promote_build(
    State(state): State<AppState>,
    Extension(Owner(owner)): Extension<Owner>,
    Path(build_id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let body = json_body(&body)?;
    only_fields(&body, &["tag"])?;
    let tag = body
        .get("tag")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::invalid("tag", "is required (a string)"))?;
    Ok(Json(promote(&state, &owner, &build_id, tag)?))
}

/// Points `tag` of the build's template at `build_id` (a ready build with its artifact).
fn promote(state: &AppState, owner: &str, build_id: &str, tag: &str) -> ApiResult<Value> {
    validate_tag(tag).map_err(|e| ApiError::invalid("tag", e))?;
    let store = state.runner.store();
    let record = store
        .build(Some(owner), build_id)?
        .ok_or_else(|| ApiError::build_not_found(build_id))?;
    let view = view::build(&record);
    if view["promotability"]["promotable"] != json!(true) {
        return Err(ApiError::conflict(format!(
            "build {build_id} is {} and cannot be promoted ({}); only ready builds with a retained artifact can",
            record.status,
            view["promotability"]["reason"].as_str().unwrap_or("not promotable")
        )));
    }
    store.set_tag(&record.template_id, tag, &record.id)?;
    let record = store.build(Some(owner), build_id)?.unwrap_or(record);
    let name = store
        .template(owner, &record.template_id)?
        .map_or_else(|| record.name.clone(), |t| t.name);
    Ok(json!({
        "build": view::build(&record),
        "tag": tag,
        "canonical_ref": format!("{owner}/{name}:{tag}"),
    }))
}

/// `GET /v1/templates/{template}/tags`: `{tags: [{tag, build_id}], default_tag}`.
async fn list_tags(
    State(state): State<AppState>,
    Extension(Owner(owner)): Extension<Owner>,
    Path(template): Path<String>,
) -> ApiResult<Json<Value>> {
    let row = state
        .runner
        .store()
        .template(&owner, &template)?
        .ok_or_else(|| ApiError::template_not_found(&template))?;
    let tags: Vec<Value> = row
        .tags
        .iter()
        .map(|(tag, build)| json!({ "tag": tag, "build_id": build }))
        .collect();
    Ok(Json(
        json!({ "tags": tags, "default_tag": crate::refs::default_tag(&row) }),
    ))
}

/// `POST /v1/templates/{template}/tags` `{tag, build_id}`: like promote, for a build of this
/// template.
async fn assign_tag(
    State(state): State<AppState>,
    Extension(Owner(owner)): Extension<Owner>,
    Path(template): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let body = json_body(&body)?;
    only_fields(&body, &["tag", "build_id"])?;
    let field = |name: &str| {
        body.get(name)
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| ApiError::invalid(name, "is required (a string)"))
    };
    let (tag, build_id) = (field("tag")?, field("build_id")?);
    let id = template_id(&state, &owner, &template)?;
    let belongs = state
        .runner
        .store()
        .build(Some(&owner), &build_id)?
        .is_some_and(|b| b.template_id == id);
    if !belongs {
        return Err(ApiError::build_not_found(&build_id));
    }
    Ok(Json(promote(&state, &owner, &build_id, &tag)?))
}

/// `DELETE /v1/templates/{template}/tags/{tag}`: refs by that tag stop resolving; the build
/// and its artifact stay.
async fn remove_tag(
    State(state): State<AppState>,
    Extension(Owner(owner)): Extension<Owner>,
    Path((template, tag)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let id = template_id(&state, &owner, &template)?;
    if !state.runner.store().remove_tag(&id, &tag)? {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "template_resource_not_found",
            format!("template {template:?} has no tag {tag:?}"),
        ));
    }
    Ok(Json(template_details(&state, &owner, &id)?))
}

fn validation_warnings(definition: &BuildDefinition) -> Vec<String> {
    let mut warnings = Vec::new();
    if definition.cpu_count.is_some() || definition.memory_mb.is_some() {
        warnings.push(
            "cpu_count and memory_mb are recorded but unused: image imports boot no build VM yet"
                .to_string(),
        );
    }
    if !definition.internet_access && definition.build_backend == "native" {
        warnings.push(
            "internet_access=false has no effect on an image import (the base image is still pulled)"
                .to_string(),
        );
    }
    if definition.start_cmd.is_some() || definition.readiness.is_some() {
        warnings.push(START_CMD_WARNING.to_string());
    }
    warnings
}

async fn validate(
    State(state): State<AppState>,
    Extension(Owner(owner)): Extension<Owner>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let body = json_body(&body)?;
    // Blobs are uploaded when the build starts, so validation reports absent ones as a
    // warning rather than an error.
    let checked = parse_build_request(&body).and_then(|(mut definition, _)| {
        let context = definition.build_context.take();
        let named = std::mem::take(&mut definition.named_contexts);
        check_base(&state, &owner, &definition)?;
        definition.build_context = context;
        definition.named_contexts = named;
        Ok(definition)
    });
    Ok(Json(match checked {
        Ok(definition) => {
            let mut warnings = validation_warnings(&definition);
            if definition.build_context.is_some() || !definition.named_contexts.is_empty() {
                let blobs = context_blobs(&state, &owner)?;
                let digests: Vec<_> = definition
                    .build_context
                    .iter()
                    .chain(definition.named_contexts.values())
                    .flat_map(ContextManifest::file_digests)
                    .filter_map(|d| parse_digest(d).ok())
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .collect();
                let missing = blobs.missing(&digests).len();
                if missing > 0 {
                    warnings.push(format!(
                        "{missing} of {} file blobs of the build context are not uploaded yet; a build uploads them first",
                        digests.len()
                    ));
                }
            }
            json!({ "valid": true, "errors": [], "warnings": warnings })
        }
        Err(error) => json!({
            "valid": false,
            "errors": [{ "code": error.code, "message": error.message, "phase": "prepare" }],
            "warnings": [],
        }),
    }))
}

async fn plan(
    State(state): State<AppState>,
    Extension(Owner(owner)): Extension<Owner>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let body = json_body(&body)?;
    let (definition, secrets) = parse_build_request(&body)?;
    let mut warnings = validation_warnings(&definition);
    let buildkit = checked_buildkit_spec(&definition, &secrets)?;
    let mut rendered_dockerfile = None;
    let mut build_env_keys: Vec<String> = Vec::new();
    let (base_image, base_template, defaults) = match &definition.base {
        Base::Dockerfile { .. } => {
            let final_base = buildkit
                .as_ref()
                .and_then(|(_, _, parsed)| parsed.final_base());
            warnings.push(
                "runtime defaults (env, user, workdir, command) come from the built image's config"
                    .to_string(),
            );
            (final_base, None, None)
        }
        Base::Image { selector } => {
            let requested = selector
                .image_reference()
                .map_err(|e| ApiError::invalid_body(e.to_string()))?;
            let canonical = nullspace_oci::Reference::parse(&requested)
                .map(|r| r.to_string())
                .map_err(|e| ApiError::invalid("base_image", e))?;
            let defaults = match &buildkit {
                Some((_, Some(rendered), _)) => {
                    rendered_dockerfile = Some(rendered.dockerfile.clone());
                    build_env_keys = rendered.build_env_keys.clone();
                    Some(declared_defaults(&definition.steps))
                }
                _ => None,
            };
            warnings.push(
                "runtime defaults (env, user, workdir, start command, readiness) come from the image config when the build resolves it".to_string(),
            );
            (Some(canonical), None, defaults)
        }
        Base::Template { reference } => {
            let parent = resolve_ref(state.runner.store().as_ref(), &owner, reference)?;
            let mut defaults = parent.build.result.map(|r| r.runtime_defaults);
            if let Some((_, Some(rendered), _)) = &buildkit {
                rendered_dockerfile = Some(rendered.dockerfile.clone());
                build_env_keys = rendered.build_env_keys.clone();
                let declared = declared_defaults(&definition.steps);
                if let Some(d) = &mut defaults {
                    d.env.extend(declared.env);
                    d.user = declared.user.or(d.user.take());
                    d.workdir = declared.workdir.or(d.workdir.take());
                }
            }
            (
                None,
                Some(format!(
                    "{owner}/{}:{}",
                    parent.template.name, parent.build.id
                )),
                defaults,
            )
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
    Ok(Json(json!({
        "build_plan": {
            "source_kind": definition.source_kind(),
            "dockerfile": rendered_dockerfile,
            "build_env_keys": build_env_keys,
            "build_secret_ids": definition.build_secret_ids,
            "build_backend": definition.build_backend,
            "name": definition.name,
            "tags": definition.tags,
            "base_image": base_image,
            "base_template": base_template,
            "run_steps": [],
            "build_steps": [],
            "build_envs": {},
            "env_assignments": [],
            "default_env_keys": defaults.as_ref().map(|d| d.env.keys().cloned().collect::<Vec<_>>()),
            "ignored_instructions": [],
            "start_cmd": defaults.as_ref().and_then(|d| d.start_cmd.clone()),
            "default_user": defaults.as_ref().and_then(|d| d.user.clone()),
            "default_workdir": defaults.as_ref().and_then(|d| d.workdir.clone()),
            "readiness": defaults.as_ref().and_then(|d| d.readiness.clone()),
            "ignored_instruction_warnings": [],
            "build_config": {
                "vcpus": definition.cpu_count,
                "memory_mib": definition.memory_mb,
                "internet_access": definition.internet_access,
                "disk_mb": definition.disk_mb,
                "skip_cache": definition.skip_cache,
            },
        },
        "warnings": warnings,
        "requires_base_image_auth": secrets.base_image_auth.is_some(),
        "source_digest": null,
        "context_manifest": definition.build_context.as_ref().map(|c| json!({
            "context_digest": c.digest(),
            "file_count": c.file_count(),
        })),
        "dockerfile_digest": null,
    })))
}

/// The runtime defaults that declarative steps set (env keys, user, workdir); values of env
/// vars are never shown.
/// Said wherever a start command or readiness is accepted: this server records them, it does
/// not boot a build VM to run them.
pub const START_CMD_WARNING: &str = "start_cmd and readiness are recorded as the template's runtime defaults; this server builds rootfs templates without a build VM, so they did not run and no snapshot was taken";

fn declared_defaults(steps: &[Step]) -> nullspace_rootfs::runtime::RuntimeDefaults {
    let mut defaults = nullspace_rootfs::runtime::RuntimeDefaults::default();
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

async fn history(
    State(state): State<AppState>,
    Extension(Owner(owner)): Extension<Owner>,
    Path(template): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    for key in query.keys() {
        if !["status", "backend", "limit", "cursor"].contains(&key.as_str()) {
            return Err(ApiError::invalid(key, "unknown query parameter"));
        }
    }
    let status_filter = query.get("status").cloned();
    if let Some(s) = &status_filter {
        if ![
            status::WAITING,
            status::BUILDING,
            status::READY,
            status::ERROR,
            status::CANCELLED,
        ]
        .contains(&s.as_str())
        {
            return Err(ApiError::invalid(
                "status",
                "must be waiting, building, ready, error or cancelled",
            ));
        }
    }
    let backend = query.get("backend").cloned();
    if let Some(b) = &backend {
        if b != "native" && b != "buildkit" {
            return Err(ApiError::invalid("backend", "must be native or buildkit"));
        }
    }
    let limit = query_u64(&query, "limit")?.unwrap_or(100).clamp(1, 1000) as usize;
    let before = query_u64(&query, "cursor")?
        .map(|c| i64::try_from(c).map_err(|_| ApiError::invalid("cursor", "is out of range")))
        .transpose()?;
    let store = state.runner.store();
    let row = store
        .template(&owner, &template)?
        .ok_or_else(|| ApiError::template_not_found(&template))?;
    let rows = store.history(
        &owner,
        &row.id,
        &HistoryFilter {
            status: status_filter,
            backend,
            limit: limit + 1,
            before,
        },
    )?;
    let more = rows.len() > limit;
    let rows = &rows[..rows.len().min(limit)];
    let next_cursor = if more {
        rows.last().map(|(seq, _)| seq.to_string())
    } else {
        None
    };
    Ok(Json(json!({
        "builds": rows.iter().map(|(_, r)| view::history_row(r)).collect::<Vec<_>>(),
        "next_cursor": next_cursor,
    })))
}

async fn get_ref(
    State(state): State<AppState>,
    Extension(Owner(owner)): Extension<Owner>,
    Path(reference): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    let store = state.runner.store();
    let details = if reference.starts_with("tmpl_") {
        let row = store
            .template(&owner, &reference)?
            .ok_or_else(|| ApiError::template_not_found(&reference))?;
        let build = crate::refs::default_tag(&row)
            .and_then(|tag| row.tags.iter().find(|(t, _)| *t == tag).cloned())
            .map(|(_, b)| store.build(Some(&owner), &b))
            .transpose()?
            .flatten();
        view::template(&row, None, build.as_ref())
    } else {
        let resolved = resolve_ref(store.as_ref(), &owner, &reference)?;
        view::template(
            &resolved.template,
            resolved.tag.as_deref(),
            Some(&resolved.build),
        )
    };
    let details = view::mask(details, query.get("fields").map(String::as_str))
        .map_err(|m| ApiError::invalid("fields", m))?;
    Ok(Json(details))
}

/// `owner`'s template by id, name or alias, with its default build, as the details view.
fn template_details(state: &AppState, owner: &str, template: &str) -> ApiResult<Value> {
    let store = state.runner.store();
    let row = store
        .template(owner, template)?
        .ok_or_else(|| ApiError::template_not_found(template))?;
    let build = crate::refs::default_tag(&row)
        .and_then(|tag| row.tags.iter().find(|(t, _)| *t == tag).cloned())
        .map(|(_, b)| store.build(Some(owner), &b))
        .transpose()?
        .flatten();
    Ok(view::template(&row, None, build.as_ref()))
}

/// The template id of `owner`'s `template` (id, name or alias).
fn template_id(state: &AppState, owner: &str, template: &str) -> ApiResult<String> {
    Ok(state
        .runner
        .store()
        .template(owner, template)?
        .ok_or_else(|| ApiError::template_not_found(template))?
        .id)
}

fn required_name(body: &Value, field: &str) -> ApiResult<String> {
    only_fields(body, &[field])?;
    let name = body
        .get(field)
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::invalid(field, "is required (a string)"))?;
    nullspace_build::request::validate_name(name).map_err(|e| {
        ApiError::invalid(field, e.to_string().replace("invalid request: name: ", ""))
    })?;
    Ok(name.to_string())
}

/// `POST /v1/templates/{template}/rename` `{"name": "new-name"}`: the template keeps its id,
/// builds, tags and aliases; refs by the old name stop resolving.
async fn rename_template(
    State(state): State<AppState>,
    Extension(Owner(owner)): Extension<Owner>,
    Path(template): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let name = required_name(&json_body(&body)?, "name")?;
    let id = template_id(&state, &owner, &template)?;
    state.runner.store().rename_template(&owner, &id, &name)?;
    Ok(Json(template_details(&state, &owner, &id)?))
}

/// `POST /v1/templates/{template}/aliases` `{"alias": "other-name"}`: refs may use the alias
/// wherever they use the name.
async fn add_alias(
    State(state): State<AppState>,
    Extension(Owner(owner)): Extension<Owner>,
    Path(template): Path<String>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let alias = required_name(&json_body(&body)?, "alias")?;
    let id = template_id(&state, &owner, &template)?;
    state.runner.store().add_alias(&owner, &id, &alias)?;
    Ok((
        StatusCode::CREATED,
        Json(template_details(&state, &owner, &id)?),
    ))
}

/// `DELETE /v1/templates/{template}/aliases/{alias}`.
async fn remove_alias(
    State(state): State<AppState>,
    Extension(Owner(owner)): Extension<Owner>,
    Path((template, alias)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let id = template_id(&state, &owner, &template)?;
    if !state.runner.store().remove_alias(&owner, &id, &alias)? {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "template_resource_not_found",
            format!("template {template:?} has no alias {alias:?}"),
        ));
    }
    Ok(Json(template_details(&state, &owner, &id)?))
}

async fn list_templates(
    State(state): State<AppState>,
    Extension(Owner(owner)): Extension<Owner>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    let store = state.runner.store();
    let mut templates = Vec::new();
    for row in store.templates(&owner)? {
        let build = crate::refs::default_tag(&row)
            .and_then(|tag| row.tags.iter().find(|(t, _)| *t == tag).cloned())
            .map(|(_, b)| store.build(Some(&owner), &b))
            .transpose()?
            .flatten();
        let details = view::template(&row, None, build.as_ref());
        templates.push(
            view::mask(details, query.get("fields").map(String::as_str))
                .map_err(|m| ApiError::invalid("fields", m))?,
        );
    }
    Ok(Json(json!({ "templates": templates })))
}
