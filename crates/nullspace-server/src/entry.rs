//! Durable build log entries (spec §3.6) and the mapping from the engine's [`BuildEvent`]s.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use nullspace_build::BuildEvent;

use crate::error::ErrorDetail;

/// One durable log entry. `offset` is 0-based and dense per build.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LogEntry {
    /// Build id.
    pub build_id: String,
    /// Template id.
    pub template_id: String,
    /// Position in the build's log.
    pub offset: u64,
    /// RFC 3339 time.
    pub timestamp: String,
    /// `start`, `message`, `cache`, `retry`, `warning`, `error`, `cancelled` or `end`.
    pub kind: String,
    /// `debug`, `info`, `warn` or `error`.
    pub level: String,
    /// Human-readable text.
    pub message: String,
    /// Build phase (`preparing`, `cache`, `finalize`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// 1-based step.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step_index: Option<u32>,
    /// Steps in the build.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_steps: Option<u32>,
    /// `file_blob`, `layer` or `final_artifact`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_kind: Option<String>,
    /// `hit`, `miss`, `stored` or `bypass`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_status: Option<String>,
    /// Why the cache missed or was bypassed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_reason: Option<String>,
    /// What the cache decision was about.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_subject: Option<String>,
    /// Failure detail on `error` entries.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_detail: Option<ErrorDetail>,
    /// Outcome on `end` entries: `ready`, `error` or `cancelled`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
    /// Extra data on terminal entries.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result_metadata: Option<serde_json::Value>,
}

impl LogEntry {
    /// An entry of `kind` at `level` with `message`; offset and ids are filled by the store.
    pub fn new(kind: &str, level: &str, message: impl Into<String>) -> LogEntry {
        LogEntry {
            kind: kind.into(),
            level: level.into(),
            message: message.into(),
            timestamp: nullspace_build::ids::now_rfc3339(),
            ..LogEntry::default()
        }
    }

    /// Sets the phase.
    pub fn phase(mut self, phase: &str) -> LogEntry {
        self.phase = Some(phase.into());
        self
    }

    /// Sets the step.
    pub fn step(mut self, index: u32, total: u32) -> LogEntry {
        self.step_index = Some(index);
        self.total_steps = Some(total);
        self
    }
}

/// Steps of an image import, as the log numbers them.
pub const IMPORT_STEPS: u32 = 3;

/// How often byte-progress events become a log line, per layer and direction.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// Turns engine events into log entries, throttling byte progress.
#[derive(Default)]
pub struct EventMapper {
    last_progress: Mutex<HashMap<(bool, usize), Instant>>,
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

impl EventMapper {
    /// The entry for `event`, or `None` when it is throttled away.
    pub fn map(&self, event: &BuildEvent) -> Option<LogEntry> {
        Some(match event {
            BuildEvent::Resolved {
                reference,
                digest,
                platform,
                layers,
            } => LogEntry::new(
                "message",
                "info",
                format!(
                    "resolved {reference} to {digest} ({platform}, {} layer(s), {:.1} MiB)",
                    layers.len(),
                    mib(layers.iter().map(|(_, s)| *s).sum())
                ),
            )
            .phase("preparing")
            .step(1, IMPORT_STEPS),
            BuildEvent::Download {
                index,
                bytes,
                total,
            }
            | BuildEvent::Apply {
                index,
                bytes,
                total,
            } => {
                let download = matches!(event, BuildEvent::Download { .. });
                if !self.due(download, *index) {
                    return None;
                }
                let verb = if download { "downloading" } else { "applying" };
                LogEntry::new(
                    "message",
                    "debug",
                    format!(
                        "{verb} layer {}: {:.1} / {:.1} MiB",
                        index + 1,
                        mib(*bytes),
                        mib(*total)
                    ),
                )
                .phase("preparing")
                .step(2, IMPORT_STEPS)
            }
            BuildEvent::Downloaded { index, cached } => LogEntry::new(
                "message",
                "info",
                format!(
                    "layer {} {}",
                    index + 1,
                    if *cached {
                        "already in the blob store"
                    } else {
                        "downloaded"
                    }
                ),
            )
            .phase("preparing")
            .step(2, IMPORT_STEPS),
            BuildEvent::Applied { index, entries } => LogEntry::new(
                "message",
                "info",
                format!("layer {} applied ({entries} entries)", index + 1),
            )
            .phase("preparing")
            .step(2, IMPORT_STEPS),
            BuildEvent::Cache {
                kind,
                status,
                reason,
                subject,
            } => {
                let mut entry = LogEntry::new(
                    "cache",
                    "info",
                    format!(
                        "cache {status} ({kind}): {subject}{}",
                        reason.map(|r| format!(" [{r}]")).unwrap_or_default()
                    ),
                )
                .phase("cache");
                entry.cache_kind = Some((*kind).into());
                entry.cache_status = Some((*status).into());
                entry.cache_reason = reason.map(str::to_string);
                entry.cache_subject = Some(subject.clone());
                entry
            }
            BuildEvent::Step { index, total, name } => {
                LogEntry::new("message", "info", format!("step {index}/{total}: {name}"))
                    .phase("step")
                    .step(
                        u32::try_from(*index).unwrap_or(u32::MAX),
                        u32::try_from(*total).unwrap_or(u32::MAX),
                    )
            }
            BuildEvent::Log { stream, message } => {
                LogEntry::new("message", "debug", format!("[{stream}] {message}")).phase("step")
            }
            BuildEvent::Warning { message } => {
                LogEntry::new("warning", "warn", message.clone()).phase("preparing")
            }
            BuildEvent::Message { message } => LogEntry::new("message", "info", message.clone())
                .phase("preparing")
                .step(1, IMPORT_STEPS),
        })
    }

    fn due(&self, download: bool, index: usize) -> bool {
        let Ok(mut last) = self.last_progress.lock() else {
            return false;
        };
        let now = Instant::now();
        match last.get(&(download, index)) {
            Some(at) if now.duration_since(*at) < PROGRESS_EVERY => false,
            _ => {
                last.insert((download, index), now);
                true
            }
        }
    }
}

/// Counts of cache decisions per layer kind (`cache_summary`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheSummary {
    /// Final-artifact hits.
    pub final_artifact_hits: u64,
    /// Final-artifact misses.
    pub final_artifact_misses: u64,
    /// Final-artifact bypasses.
    pub final_artifact_bypasses: u64,
    /// Final-artifact stores.
    pub final_artifact_stores: u64,
    /// Layer hits.
    pub layer_hits: u64,
    /// Layer misses.
    pub layer_misses: u64,
    /// Layer bypasses.
    pub layer_bypasses: u64,
    /// Layer stores.
    pub layer_stores: u64,
    /// File-blob hits.
    pub file_blob_hits: u64,
    /// File-blob misses.
    pub file_blob_misses: u64,
    /// File-blob bypasses.
    pub file_blob_bypasses: u64,
    /// File-blob stores.
    pub file_blob_stores: u64,
}

impl CacheSummary {
    /// Counts one decision.
    pub fn count(&mut self, kind: &str, status: &str) {
        let slot = match (kind, status) {
            ("final_artifact", "hit") => &mut self.final_artifact_hits,
            ("final_artifact", "miss") => &mut self.final_artifact_misses,
            ("final_artifact", "bypass") => &mut self.final_artifact_bypasses,
            ("final_artifact", "stored") => &mut self.final_artifact_stores,
            ("layer", "hit") => &mut self.layer_hits,
            ("layer", "miss") => &mut self.layer_misses,
            ("layer", "bypass") => &mut self.layer_bypasses,
            ("layer", "stored") => &mut self.layer_stores,
            ("file_blob", "hit") => &mut self.file_blob_hits,
            ("file_blob", "miss") => &mut self.file_blob_misses,
            ("file_blob", "bypass") => &mut self.file_blob_bypasses,
            ("file_blob", "stored") => &mut self.file_blob_stores,
            _ => return,
        };
        *slot += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_is_throttled() {
        let mapper = EventMapper::default();
        let event = BuildEvent::Download {
            index: 0,
            bytes: 1,
            total: 10,
        };
        assert!(mapper.map(&event).is_some());
        for _ in 0..1000 {
            assert!(mapper.map(&event).is_none());
        }
    }
}
