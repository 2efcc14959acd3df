//! The reconnectable log stream (spec §3.6): SSE frames `id: <offset>`, `event: log`,
//! `data: <entry>`, replayed from the durable log and, with `follow`, continued live.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::Extension;
use futures_util::Stream;

use nullspace_api::{ErrorEnvelope, LogEntry};

use crate::error::ApiError;

use super::extract::{Owner, QueryParams};
use super::{ApiResult, AppState};

/// Entries read from the store at once.
const PAGE: usize = 1000;

/// Store errors in a row after which a stream ends.
const MAX_STORE_ERRORS: u32 = 30;

struct LogStream {
    state: AppState,
    build_id: String,
    offset: u64,
    follow: bool,
    buffer: std::collections::VecDeque<LogEntry>,
    done: bool,
    /// Store errors in a row (a follower rides out a short outage of a shared store).
    errors: u32,
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
            let (build_id, offset) = (self.build_id.clone(), self.offset);
            let read = self
                .state
                .blocking(move |state| {
                    let store = state.runner.store();
                    // Read the status before the entries: a terminal status is written
                    // together with the final entries, so entries read after seeing it are
                    // complete.
                    let terminal = match store.build(None, &build_id) {
                        Ok(Some(record)) => Ok(record.status.is_terminal()),
                        Ok(None) => Ok(true),
                        Err(error) => Err(error),
                    };
                    Ok((terminal, store.entries(&build_id, offset, PAGE)))
                })
                .await;
            let (terminal, entries) = match read {
                Ok(read) => read,
                Err(error) => {
                    tracing::warn!("log stream {}: {}", self.build_id, error.message);
                    self.done = true;
                    continue;
                }
            };
            let read = match (terminal, entries) {
                (Ok(terminal), Ok(entries)) => Ok((terminal, entries)),
                (Err(error), _) | (_, Err(error)) => Err(error),
            };
            let terminal = match read {
                Ok((_, entries)) if !entries.is_empty() => {
                    self.errors = 0;
                    self.buffer.extend(entries);
                    continue;
                }
                Ok((terminal, _)) => {
                    self.errors = 0;
                    terminal
                }
                Err(error) => {
                    tracing::warn!("log stream {}: {error}", self.build_id);
                    self.errors += 1;
                    // About half a minute of a store that does not answer ends the stream.
                    self.done = self.errors > MAX_STORE_ERRORS;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            if !self.follow || terminal {
                self.done = true;
                continue;
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), self.changes.changed()).await;
        }
    }
}

/// The build's log as server-sent events. A reconnecting client resumes with `offset` (or
/// `cursor`) or the standard `Last-Event-ID` header, whichever is further.
#[utoipa::path(
    get,
    path = "/v1/templates/builds/{build_id}/logs",
    tag = "builds",
    params(
        ("build_id" = String, Path),
        ("offset" = Option<u64>, Query, description = "first durable offset to replay (overrides cursor)"),
        ("cursor" = Option<u64>, Query, description = "alias of offset"),
        ("follow" = Option<bool>, Query, description = "keep the stream open until the build ends"),
        ("Last-Event-ID" = Option<String>, Header, description = "the last offset received; replay resumes after it"),
    ),
    responses(
        (status = 200, content_type = "text/event-stream", body = LogEntry, description = "`event: log` frames whose data is a log entry"),
        (status = 404, body = ErrorEnvelope),
    ),
)]
pub async fn stream_logs(
    State(state): State<AppState>,
    Extension(Owner(owner)): Extension<Owner>,
    Path(build_id): Path<String>,
    headers: HeaderMap,
    query: QueryParams,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let requested = match query.u64("offset")? {
        Some(offset) => offset,
        None => query.u64("cursor")?.unwrap_or(0),
    };
    let resumed = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|last| last.saturating_add(1));
    let offset = requested.max(resumed.unwrap_or(0));
    let follow = query.bool("follow")?;
    let (id, who) = (build_id.clone(), owner);
    state
        .blocking(move |state| {
            state
                .runner
                .store()
                .build(Some(&who), &id)?
                .ok_or_else(|| ApiError::build_not_found(&id))
        })
        .await?;
    let changes = state.runner.subscribe();
    let stream = LogStream {
        state,
        build_id,
        offset,
        follow,
        buffer: Default::default(),
        done: false,
        errors: 0,
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
