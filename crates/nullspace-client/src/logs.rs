//! Following a build's log stream (SSE) so that a dropped connection or a restarted server
//! loses nothing: the stream is reopened from the next offset (and the standard
//! `Last-Event-ID`), with the client's backoff, and no entry is delivered twice.

use backon::BackoffBuilder as _;
use eventsource_stream::Eventsource as _;
use futures_util::StreamExt as _;

use nullspace_api::LogEntry;

use crate::error::ClientError;
use crate::http::{segment, Client};

/// How long a followed stream may stay silent: the server sends a keep-alive comment every
/// 15 s, so a stream without a byte for longer is dead (a host lost, a NAT dropped it) and
/// is resumed rather than waited on forever.
const IDLE_LIMIT: std::time::Duration = std::time::Duration::from_secs(45);

/// The response's bytes, ending in an error when none arrive for [`IDLE_LIMIT`].
fn with_idle_limit(
    response: reqwest::Response,
) -> impl futures_util::Stream<Item = Result<bytes::Bytes, String>> {
    futures_util::stream::unfold(
        Some(Box::pin(response.bytes_stream())),
        |state| async move {
            let mut stream = state?;
            match tokio::time::timeout(IDLE_LIMIT, stream.next()).await {
                Ok(Some(chunk)) => Some((chunk.map_err(|e| e.to_string()), Some(stream))),
                Ok(None) => None,
                Err(_) => Some((Err(format!("no data for {}s", IDLE_LIMIT.as_secs())), None)),
            }
        },
    )
}

impl Client {
    /// Calls `on_entry` for every log entry of `build_id` from `offset` on, once each, in
    /// offset order. With `follow`, keeps going until the build has ended. A dropped stream
    /// is resumed; only when the retry budget runs out is it [`ClientError::StreamLost`].
    pub async fn follow_logs(
        &self,
        build_id: &str,
        offset: u64,
        follow: bool,
        mut on_entry: impl FnMut(&LogEntry) -> Result<(), ClientError>,
    ) -> Result<(), ClientError> {
        let mut next = offset;
        let mut delays = self.backoff().build();
        loop {
            let failure =
                match self.open_logs(build_id, next, follow).await {
                    Ok(response) => {
                        let mut events = Box::pin(with_idle_limit(response).eventsource());
                        let mut dropped = None;
                        while let Some(event) = events.next().await {
                            match event {
                                Ok(event) if event.event == "log" => {
                                    let entry: LogEntry = serde_json::from_str(&event.data)
                                        .map_err(|e| ClientError::Decode {
                                            what: "a log entry",
                                            message: e.to_string(),
                                        })?;
                                    if entry.offset < next {
                                        continue;
                                    }
                                    next = entry.offset + 1;
                                    delays = self.backoff().build();
                                    on_entry(&entry)?;
                                }
                                Ok(_) => {}
                                Err(error) => {
                                    dropped = Some(error.to_string());
                                    break;
                                }
                            }
                        }
                        match dropped {
                            Some(message) => message,
                            None if !follow => return Ok(()),
                            // A followed stream ends when the build does, or when the server
                            // stops: ask which.
                            None => match self.status_page(build_id, next).await {
                                Ok(page)
                                    if page.build.summary.status.is_terminal()
                                        && page.entries.is_empty() =>
                                {
                                    return Ok(())
                                }
                                Ok(_) => "the stream ended before the build did".to_string(),
                                Err(error) if error.is_transient() => error.to_string(),
                                Err(error) => return Err(error),
                            },
                        }
                    }
                    Err(error) if error.is_transient() => error.to_string(),
                    Err(error) => return Err(error),
                };
            match delays.next() {
                Some(delay) => {
                    tracing::warn!("log stream of {build_id}: {failure}; resuming from offset {next} in {delay:?}");
                    tokio::time::sleep(delay).await;
                }
                None => {
                    return Err(ClientError::StreamLost {
                        build_id: build_id.to_string(),
                        message: failure,
                    })
                }
            }
        }
    }

    /// Opens the stream at `offset`; `Last-Event-ID` says the same for servers (and proxies)
    /// that only read the header.
    async fn open_logs(
        &self,
        build_id: &str,
        offset: u64,
        follow: bool,
    ) -> Result<reqwest::Response, ClientError> {
        let path = format!(
            "/v1/templates/builds/{}/logs?offset={offset}&follow={follow}",
            segment(build_id)
        );
        let mut request = self
            .request(reqwest::Method::GET, &path)
            .header(reqwest::header::ACCEPT, "text/event-stream");
        if let Some(last) = offset.checked_sub(1) {
            request = request.header("last-event-id", last.to_string());
        }
        self.send(request).await
    }
}
