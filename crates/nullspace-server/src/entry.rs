//! Durable build log entries (spec §3.6) and the mapping from the engine's [`BuildEvent`]s.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nullspace_api::{LogKind, LogLevel, LogPhase};
use nullspace_build::BuildEvent;

pub use nullspace_api::{CacheSummary, LogEntry};

/// A new entry of `kind` at `level`, stamped now; offset and ids are filled by the store.
pub fn entry(kind: LogKind, level: LogLevel, message: impl Into<String>) -> LogEntry {
    LogEntry::new(kind, level, message, nullspace_build::ids::now_rfc3339())
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
            } => entry(
                LogKind::Message,
                LogLevel::Info,
                format!(
                    "resolved {reference} to {digest} ({platform}, {} layer(s), {:.1} MiB)",
                    layers.len(),
                    mib(layers.iter().map(|(_, s)| *s).sum())
                ),
            )
            .phase(LogPhase::Preparing)
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
                entry(
                    LogKind::Message,
                    LogLevel::Debug,
                    format!(
                        "{verb} layer {}: {:.1} / {:.1} MiB",
                        index + 1,
                        mib(*bytes),
                        mib(*total)
                    ),
                )
                .phase(LogPhase::Preparing)
                .step(2, IMPORT_STEPS)
            }
            BuildEvent::Downloaded { index, cached } => entry(
                LogKind::Message,
                LogLevel::Info,
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
            .phase(LogPhase::Preparing)
            .step(2, IMPORT_STEPS),
            BuildEvent::Applied { index, entries } => entry(
                LogKind::Message,
                LogLevel::Info,
                format!("layer {} applied ({entries} entries)", index + 1),
            )
            .phase(LogPhase::Preparing)
            .step(2, IMPORT_STEPS),
            BuildEvent::Cache {
                kind,
                status,
                reason,
                subject,
            } => {
                let mut entry = entry(
                    LogKind::Cache,
                    LogLevel::Info,
                    format!(
                        "cache {status} ({kind}): {subject}{}",
                        reason.map(|r| format!(" [{r}]")).unwrap_or_default()
                    ),
                )
                .phase(LogPhase::Cache);
                entry.cache_kind = Some(*kind);
                entry.cache_status = Some(*status);
                entry.cache_reason = reason.map(str::to_string);
                entry.cache_subject = Some(subject.clone());
                entry
            }
            BuildEvent::Step { index, total, name } => entry(
                LogKind::Message,
                LogLevel::Info,
                format!("step {index}/{total}: {name}"),
            )
            .phase(LogPhase::Step)
            .step(
                u32::try_from(*index).unwrap_or(u32::MAX),
                u32::try_from(*total).unwrap_or(u32::MAX),
            ),
            BuildEvent::Log { stream, message } => entry(
                LogKind::Message,
                LogLevel::Debug,
                format!("[{stream}] {message}"),
            )
            .phase(LogPhase::Step),
            BuildEvent::Warning { message } => {
                entry(LogKind::Warning, LogLevel::Warn, message.clone()).phase(LogPhase::Preparing)
            }
            BuildEvent::Vm {
                phase,
                level,
                message,
            } => entry(LogKind::Message, *level, message.clone()).phase(*phase),
            BuildEvent::GuestOutput { stream, line } => entry(
                LogKind::Message,
                LogLevel::Info,
                format!("[{stream}] {line}"),
            )
            .phase(LogPhase::Startup),
            BuildEvent::Message { message } => {
                entry(LogKind::Message, LogLevel::Info, message.clone())
                    .phase(LogPhase::Preparing)
                    .step(1, IMPORT_STEPS)
            }
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
