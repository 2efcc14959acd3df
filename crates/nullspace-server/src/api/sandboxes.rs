//! Sandboxes: create from a template ref, list, get, kill, extend; commands with streamed
//! output; files written, read and listed in the guest.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use futures_util::Stream;

use nullspace_api::sandbox::{
    CommandInfo, CommandRequest, CommandStreamEvent, CreateSandboxRequest, FileEntry, FileListing,
    FileWritten, SandboxInfo, SandboxList, SetTimeoutRequest,
};
use nullspace_api::ErrorEnvelope;
use nullspace_init::protocol::Stream as OutputStream;
use nullspace_sandbox::{CommandEnd, CommandEvent, CommandRecord, CommandSpec, EndReason, Sandbox};

use crate::error::ApiError;
use crate::sandboxes::{api_error, info, BASE};

use super::extract::{JsonBody, Owner, QueryParams};
use super::{ApiResult, AppState};

/// Largest file written or read through the API.
pub const MAX_FILE_BYTES: u64 = 64 << 20;
/// Create-time or per-command env entries, at most.
const MAX_ENV: usize = 512;
/// Default command timeout.
const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest command timeout (a sandbox lives at most this long anyway).
const MAX_COMMAND_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);
/// Sandboxes listed, at most.
const LISTED: usize = 200;

fn env_list(
    field: &'static str,
    envs: &std::collections::BTreeMap<String, String>,
) -> ApiResult<Vec<(String, String)>> {
    if envs.len() > MAX_ENV {
        return Err(ApiError::invalid(
            field,
            format!("{} entries, at most {MAX_ENV}", envs.len()),
        ));
    }
    for (name, value) in envs {
        if name.is_empty() || name.contains('=') || name.contains('\0') || value.contains('\0') {
            return Err(ApiError::invalid(
                field,
                format!("{name:?}: names are non-empty without '=' or NUL; values hold no NUL"),
            ));
        }
    }
    Ok(envs.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
}

/// Creates a sandbox from a template: restores its snapshot (the start command is already
/// running and ready) or, for a rootfs-only template, boots it.
#[utoipa::path(
    post,
    path = "/v1/sandboxes",
    tag = "sandboxes",
    request_body = CreateSandboxRequest,
    responses(
        (status = 201, body = SandboxInfo),
        (status = 400, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope),
        (status = 429, body = ErrorEnvelope),
        (status = 503, body = ErrorEnvelope),
    ),
)]
pub async fn create_sandbox(
    State(state): State<AppState>,
    Extension(Owner(owner)): Extension<Owner>,
    JsonBody(request): JsonBody<CreateSandboxRequest>,
) -> ApiResult<(StatusCode, Json<SandboxInfo>)> {
    let service = state.sandboxes.clone();
    let host = service.host()?;
    let env = env_list("envs", &request.envs)?;
    let timeout = host
        .timeout(request.timeout.map(Duration::from_secs))
        .map_err(api_error)?;
    let reference = request
        .template
        .filter(|t| !t.trim().is_empty())
        .unwrap_or_else(|| BASE.to_string());
    let template = service.resolve(&owner, &reference).await?;
    let image = service.image(&template, &reference)?;
    // Created and recorded to the end even if the caller goes away: a sandbox that runs is
    // always one its owner can list and kill.
    let created = tokio::spawn(async move {
        let sandbox = host
            .create(&owner, &image, env, timeout)
            .await
            .map_err(api_error)?;
        let record = info(&sandbox);
        let (stored, who) = (record.clone(), owner.clone());
        let recorded = state
            .blocking(move |state| {
                let host = state.sandboxes.host_name();
                Ok(state.runner.store().put_sandbox(&stored, &who, &host)?)
            })
            .await;
        if let Err(error) = recorded {
            sandbox
                .end(EndReason::Killed, "it could not be recorded")
                .await;
            return Err(error);
        }
        Ok(record)
    });
    let record = created.await.map_err(ApiError::internal)??;
    Ok((StatusCode::CREATED, Json(record)))
}

/// The caller's sandboxes, newest first (running and ended).
#[utoipa::path(
    get,
    path = "/v1/sandboxes",
    tag = "sandboxes",
    params(("state" = Option<String>, Query, description = "`running` or `ended`")),
    responses((status = 200, body = SandboxList)),
)]
pub async fn list_sandboxes(
    State(state): State<AppState>,
    Extension(Owner(owner)): Extension<Owner>,
    query: QueryParams,
) -> ApiResult<Json<SandboxList>> {
    query.only(&["state"])?;
    let wanted = query.text("state").map(str::to_string);
    let who = owner.clone();
    let recorded = state
        .blocking(move |state| Ok(state.runner.store().sandboxes(&who, LISTED)?))
        .await?;
    let live = state.sandboxes.host().ok();
    let sandboxes = recorded
        .into_iter()
        .map(|record| {
            match live
                .as_ref()
                .and_then(|host| host.get(&owner, &record.sandbox_id))
            {
                Some(sandbox) => info(&sandbox),
                None => record,
            }
        })
        .filter(|s| wanted.as_deref().is_none_or(|w| s.state == w))
        .collect();
    Ok(Json(SandboxList { sandboxes }))
}

async fn recorded(state: &AppState, owner: &str, id: &str) -> ApiResult<SandboxInfo> {
    if let Ok(host) = state.sandboxes.host() {
        if let Some(sandbox) = host.get(owner, id) {
            return Ok(info(&sandbox));
        }
    }
    let (who, wanted) = (owner.to_string(), id.to_string());
    state
        .blocking(move |state| {
            state
                .runner
                .store()
                .sandbox(&who, &wanted)?
                .ok_or_else(|| api_error(nullspace_sandbox::SandboxError::NotFound(wanted.clone())))
        })
        .await
}

/// One sandbox.
#[utoipa::path(
    get,
    path = "/v1/sandboxes/{sandbox_id}",
    tag = "sandboxes",
    params(("sandbox_id" = String, Path)),
    responses((status = 200, body = SandboxInfo), (status = 404, body = ErrorEnvelope)),
)]
pub async fn get_sandbox(
    State(state): State<AppState>,
    Extension(Owner(owner)): Extension<Owner>,
    Path(id): Path<String>,
) -> ApiResult<Json<SandboxInfo>> {
    Ok(Json(recorded(&state, &owner, &id).await?))
}

/// Kills a sandbox (its VM ends at once); an ended one is returned as it is.
#[utoipa::path(
    delete,
    path = "/v1/sandboxes/{sandbox_id}",
    tag = "sandboxes",
    params(("sandbox_id" = String, Path)),
    responses((status = 200, body = SandboxInfo), (status = 404, body = ErrorEnvelope)),
)]
pub async fn kill_sandbox(
    State(state): State<AppState>,
    Extension(Owner(owner)): Extension<Owner>,
    Path(id): Path<String>,
) -> ApiResult<Json<SandboxInfo>> {
    if let Ok(sandbox) = state.sandboxes.live(&owner, &id) {
        sandbox.end(EndReason::Killed, "killed on request").await;
        return Ok(Json(info(&sandbox)));
    }
    Ok(Json(recorded(&state, &owner, &id).await?))
}

/// Sets a running sandbox's timeout to `timeout` seconds from now.
#[utoipa::path(
    post,
    path = "/v1/sandboxes/{sandbox_id}/timeout",
    tag = "sandboxes",
    params(("sandbox_id" = String, Path)),
    request_body = SetTimeoutRequest,
    responses((status = 200, body = SandboxInfo), (status = 404, body = ErrorEnvelope), (status = 409, body = ErrorEnvelope)),
)]
pub async fn set_timeout(
    State(state): State<AppState>,
    Extension(Owner(owner)): Extension<Owner>,
    Path(id): Path<String>,
    JsonBody(request): JsonBody<SetTimeoutRequest>,
) -> ApiResult<Json<SandboxInfo>> {
    let sandbox = state.sandboxes.live(&owner, &id)?;
    let host = state.sandboxes.host()?;
    let timeout = host
        .timeout(Some(Duration::from_secs(request.timeout)))
        .map_err(api_error)?;
    sandbox.set_timeout(timeout).map_err(api_error)?;
    Ok(Json(info(&sandbox)))
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The API's view of a command.
pub fn command_info(record: &CommandRecord) -> CommandInfo {
    let (stdout, stderr, left_off) = record.output();
    let end = record.end();
    let status = match &end {
        None => "running",
        Some(CommandEnd {
            timed_out: true, ..
        }) => "timed_out",
        Some(CommandEnd { killed: true, .. }) => "killed",
        Some(CommandEnd {
            error: Some(_),
            exit_code: None,
            ..
        }) => "failed",
        Some(_) => "exited",
    };
    CommandInfo {
        command_id: record.id,
        cmd: record.display.clone(),
        pid: record.pid(),
        status: status.into(),
        exit_code: end.as_ref().and_then(|e| e.exit_code),
        signal: end.as_ref().and_then(|e| e.signal),
        error: end.and_then(|e| e.error),
        stdout: lossy(&stdout),
        stderr: lossy(&stderr),
        output_left_off: left_off,
    }
}

/// Splits bytes into text without cutting a UTF-8 character between two chunks.
#[derive(Default)]
struct Utf8Carry {
    pending: Vec<u8>,
}

impl Utf8Carry {
    fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let valid = match std::str::from_utf8(&self.pending) {
            Ok(_) => self.pending.len(),
            // An incomplete character at the end waits for the next chunk; anything else
            // is replaced.
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            Err(_) => self.pending.len(),
        };
        let rest = self.pending.split_off(valid);
        let text = lossy(&self.pending);
        self.pending = rest;
        text
    }
}

fn event(payload: &CommandStreamEvent) -> Event {
    let name = match payload {
        CommandStreamEvent::Start { .. } => "start",
        CommandStreamEvent::Stdout { .. } => "stdout",
        CommandStreamEvent::Stderr { .. } => "stderr",
        CommandStreamEvent::End { .. } => "end",
    };
    Event::default()
        .event(name)
        .json_data(payload)
        .unwrap_or_else(|_| Event::default().comment("unserializable event"))
}

/// A command's events from its start: the output kept so far, then live output, then its end.
fn command_events(record: Arc<CommandRecord>) -> impl Stream<Item = Result<Event, Infallible>> {
    let follow = record.follow();
    let mut opening = vec![CommandStreamEvent::Start {
        command_id: record.id,
    }];
    let (mut out, mut err) = (Utf8Carry::default(), Utf8Carry::default());
    if !follow.stdout.is_empty() {
        opening.push(CommandStreamEvent::Stdout {
            data: out.push(&follow.stdout),
        });
    }
    if !follow.stderr.is_empty() {
        opening.push(CommandStreamEvent::Stderr {
            data: err.push(&follow.stderr),
        });
    }
    let ended = follow.end.is_some();
    if ended {
        opening.push(CommandStreamEvent::End {
            command: command_info(&record),
        });
    }
    struct Live {
        opening: std::collections::VecDeque<CommandStreamEvent>,
        events: tokio::sync::broadcast::Receiver<CommandEvent>,
        record: Arc<CommandRecord>,
        done: bool,
        out: Utf8Carry,
        err: Utf8Carry,
    }
    let live = Live {
        opening: opening.into(),
        events: follow.events,
        record,
        done: ended,
        out,
        err,
    };
    futures_util::stream::unfold(live, |mut live| async move {
        if let Some(first) = live.opening.pop_front() {
            return Some((Ok(event(&first)), live));
        }
        if live.done {
            return None;
        }
        loop {
            let payload = match live.events.recv().await {
                Ok(CommandEvent::Output(OutputStream::Stdout, data)) => {
                    CommandStreamEvent::Stdout {
                        data: live.out.push(&data),
                    }
                }
                Ok(CommandEvent::Output(OutputStream::Stderr, data)) => {
                    CommandStreamEvent::Stderr {
                        data: live.err.push(&data),
                    }
                }
                // A follower that fell behind skips ahead; the end carries the kept output.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Ok(CommandEvent::End(_)) | Err(_) => {
                    live.record.wait().await;
                    live.done = true;
                    CommandStreamEvent::End {
                        command: command_info(&live.record),
                    }
                }
            };
            return Some((Ok(event(&payload)), live));
        }
    })
}

fn wants_stream(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"))
}

fn sse(record: Arc<CommandRecord>) -> Response {
    Sse::new(command_events(record))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

/// Runs a command in a sandbox. With `background`, answers at once (202) with the command's
/// id; with `Accept: text/event-stream`, streams its output as it comes (`start`, `stdout`,
/// `stderr`, `end` events); otherwise waits for its end.
#[utoipa::path(
    post,
    path = "/v1/sandboxes/{sandbox_id}/commands",
    tag = "sandboxes",
    params(("sandbox_id" = String, Path)),
    request_body = CommandRequest,
    responses(
        (status = 200, body = CommandInfo, description = "the ended command; or `text/event-stream` of CommandStreamEvent"),
        (status = 202, body = CommandInfo, description = "a background command, running"),
        (status = 404, body = ErrorEnvelope),
        (status = 409, body = ErrorEnvelope),
    ),
)]
pub async fn run_command(
    State(state): State<AppState>,
    Extension(Owner(owner)): Extension<Owner>,
    Path(id): Path<String>,
    headers: HeaderMap,
    JsonBody(request): JsonBody<CommandRequest>,
) -> ApiResult<Response> {
    let sandbox = state.sandboxes.live(&owner, &id)?;
    let spec = CommandSpec {
        shell: request.cmd.filter(|c| !c.is_empty()),
        argv: request.argv.unwrap_or_default(),
        env: env_list("envs", &request.envs)?,
        user: request.user.filter(|u| !u.is_empty()),
        cwd: request.cwd.filter(|c| !c.is_empty()),
        timeout: match request.timeout {
            None => Some(DEFAULT_COMMAND_TIMEOUT),
            Some(0) => None,
            Some(seconds) if seconds <= MAX_COMMAND_TIMEOUT.as_secs() => {
                Some(Duration::from_secs(seconds))
            }
            Some(seconds) => {
                return Err(ApiError::invalid(
                    "timeout",
                    format!(
                        "{seconds} s is over {} s (0 means no limit)",
                        MAX_COMMAND_TIMEOUT.as_secs()
                    ),
                ))
            }
        },
    };
    if spec.shell.is_some() && !spec.argv.is_empty() {
        return Err(ApiError::invalid("cmd", "give cmd or argv, not both"));
    }
    let record = sandbox.run(&spec).await.map_err(api_error)?;
    if request.background {
        return Ok((StatusCode::ACCEPTED, Json(command_info(&record))).into_response());
    }
    if wants_stream(&headers) {
        return Ok(sse(record));
    }
    record.wait().await;
    Ok(Json(command_info(&record)).into_response())
}

fn command_of(
    state: &AppState,
    owner: &str,
    id: &str,
    command: u64,
) -> ApiResult<(Arc<Sandbox>, Arc<CommandRecord>)> {
    let sandbox = state.sandboxes.live(owner, id)?;
    let record = sandbox.command(command).map_err(api_error)?;
    Ok((sandbox, record))
}

/// A sandbox's commands (running ones and the last 32 ended), oldest first.
#[utoipa::path(
    get,
    path = "/v1/sandboxes/{sandbox_id}/commands",
    tag = "sandboxes",
    params(("sandbox_id" = String, Path)),
    responses((status = 200, body = [CommandInfo]), (status = 404, body = ErrorEnvelope)),
)]
pub async fn list_commands(
    State(state): State<AppState>,
    Extension(Owner(owner)): Extension<Owner>,
    Path(id): Path<String>,
) -> ApiResult<Json<Vec<CommandInfo>>> {
    let sandbox = state.sandboxes.live(&owner, &id)?;
    Ok(Json(
        sandbox.commands().iter().map(|c| command_info(c)).collect(),
    ))
}

/// A command; with `wait=true`, after its end.
#[utoipa::path(
    get,
    path = "/v1/sandboxes/{sandbox_id}/commands/{command_id}",
    tag = "sandboxes",
    params(("sandbox_id" = String, Path), ("command_id" = u64, Path), ("wait" = Option<bool>, Query)),
    responses((status = 200, body = CommandInfo), (status = 404, body = ErrorEnvelope)),
)]
pub async fn get_command(
    State(state): State<AppState>,
    Extension(Owner(owner)): Extension<Owner>,
    Path((id, command)): Path<(String, u64)>,
    query: QueryParams,
) -> ApiResult<Json<CommandInfo>> {
    query.only(&["wait"])?;
    let (_, record) = command_of(&state, &owner, &id, command)?;
    if query.bool("wait")? {
        record.wait().await;
    }
    Ok(Json(command_info(&record)))
}

/// A command's output from its start, live, until its end (`text/event-stream`).
#[utoipa::path(
    get,
    path = "/v1/sandboxes/{sandbox_id}/commands/{command_id}/stream",
    tag = "sandboxes",
    params(("sandbox_id" = String, Path), ("command_id" = u64, Path)),
    responses((status = 200, content_type = "text/event-stream", body = CommandStreamEvent), (status = 404, body = ErrorEnvelope)),
)]
pub async fn stream_command(
    State(state): State<AppState>,
    Extension(Owner(owner)): Extension<Owner>,
    Path((id, command)): Path<(String, u64)>,
) -> ApiResult<Response> {
    let (_, record) = command_of(&state, &owner, &id, command)?;
    Ok(sse(record))
}

/// Kills a command (its whole process group) and returns it once ended.
#[utoipa::path(
    delete,
    path = "/v1/sandboxes/{sandbox_id}/commands/{command_id}",
    tag = "sandboxes",
    params(("sandbox_id" = String, Path), ("command_id" = u64, Path)),
    responses((status = 200, body = CommandInfo), (status = 404, body = ErrorEnvelope)),
)]
pub async fn kill_command(
    State(state): State<AppState>,
    Extension(Owner(owner)): Extension<Owner>,
    Path((id, command)): Path<(String, u64)>,
) -> ApiResult<Json<CommandInfo>> {
    let (sandbox, _) = command_of(&state, &owner, &id, command)?;
    let record = sandbox.kill_command(command).await.map_err(api_error)?;
    let _ = tokio::time::timeout(Duration::from_secs(10), record.wait()).await;
    Ok(Json(command_info(&record)))
}

fn file_query(query: &QueryParams) -> ApiResult<(String, Option<String>)> {
    query.only(&["path", "user"])?;
    let path = query
        .text("path")
        .filter(|p| !p.is_empty())
        .ok_or_else(|| ApiError::invalid("path", "required"))?;
    Ok((
        path.to_string(),
        query
            .text("user")
            .filter(|u| !u.is_empty())
            .map(str::to_string),
    ))
}

/// Writes the body to a file in the sandbox (as `user`, default the template's), creating
/// its parent directories.
#[utoipa::path(
    put,
    path = "/v1/sandboxes/{sandbox_id}/files",
    tag = "sandboxes",
    params(("sandbox_id" = String, Path), ("path" = String, Query), ("user" = Option<String>, Query)),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 200, body = FileWritten), (status = 403, body = ErrorEnvelope), (status = 404, body = ErrorEnvelope)),
)]
pub async fn write_file(
    State(state): State<AppState>,
    Extension(Owner(owner)): Extension<Owner>,
    Path(id): Path<String>,
    query: QueryParams,
    body: Bytes,
) -> ApiResult<Json<FileWritten>> {
    let (path, user) = file_query(&query)?;
    let sandbox = state.sandboxes.live(&owner, &id)?;
    if body.len() as u64 > MAX_FILE_BYTES {
        return Err(api_error(nullspace_sandbox::SandboxError::File {
            kind: "too_large".into(),
            message: format!("{} bytes, over the {MAX_FILE_BYTES}-byte limit", body.len()),
        }));
    }
    let size = sandbox
        .write_file(&path, &body, user.as_deref())
        .await
        .map_err(api_error)?;
    Ok(Json(FileWritten { path, size }))
}

/// A file's bytes (as `user`, default the template's).
#[utoipa::path(
    get,
    path = "/v1/sandboxes/{sandbox_id}/files",
    tag = "sandboxes",
    params(("sandbox_id" = String, Path), ("path" = String, Query), ("user" = Option<String>, Query)),
    responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>), (status = 404, body = ErrorEnvelope)),
)]
pub async fn read_file(
    State(state): State<AppState>,
    Extension(Owner(owner)): Extension<Owner>,
    Path(id): Path<String>,
    query: QueryParams,
) -> ApiResult<Response> {
    let (path, user) = file_query(&query)?;
    let sandbox = state.sandboxes.live(&owner, &id)?;
    let data = sandbox
        .read_file(&path, user.as_deref(), MAX_FILE_BYTES)
        .await
        .map_err(api_error)?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], data).into_response())
}

/// A directory's entries (as `user`, default the template's).
#[utoipa::path(
    get,
    path = "/v1/sandboxes/{sandbox_id}/files/list",
    tag = "sandboxes",
    params(("sandbox_id" = String, Path), ("path" = String, Query), ("user" = Option<String>, Query)),
    responses((status = 200, body = FileListing), (status = 404, body = ErrorEnvelope)),
)]
pub async fn list_files(
    State(state): State<AppState>,
    Extension(Owner(owner)): Extension<Owner>,
    Path(id): Path<String>,
    query: QueryParams,
) -> ApiResult<Json<FileListing>> {
    let (path, user) = file_query(&query)?;
    let sandbox = state.sandboxes.live(&owner, &id)?;
    let (entries, truncated) = sandbox
        .list_dir(&path, user.as_deref())
        .await
        .map_err(api_error)?;
    let base = path.trim_end_matches('/');
    Ok(Json(FileListing {
        entries: entries
            .into_iter()
            .map(|e| FileEntry {
                path: format!("{base}/{}", e.name),
                name: e.name,
                kind: e.kind,
                size: e.size,
                mode: format!("{:04o}", e.mode),
                uid: e.uid,
                gid: e.gid,
            })
            .collect(),
        truncated,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_chunks_never_split_a_character() {
        let mut carry = Utf8Carry::default();
        let bytes = "é!".as_bytes();
        assert_eq!(carry.push(&bytes[..1]), "");
        assert_eq!(carry.push(&bytes[1..]), "é!");
        assert_eq!(carry.push(b"\xff ok"), "\u{fffd} ok");
    }

    #[test]
    fn env_names_and_values_are_checked() {
        let mut envs = std::collections::BTreeMap::new();
        envs.insert("A".to_string(), "1".to_string());
        assert!(env_list("envs", &envs).is_ok());
        envs.insert("B=C".to_string(), "1".to_string());
        assert!(env_list("envs", &envs).is_err());
    }
}
