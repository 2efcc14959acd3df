//! Durable build log entries (spec §3.6) and the per-kind cache counts of a build.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::enums::{BuildStatus, CacheKind, CacheStatus, LogKind, LogLevel, LogPhase};
use crate::error::ErrorDetail;

/// One durable log entry. `offset` is 0-based and dense per build.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LogEntry {
    /// Build id.
    pub build_id: String,
    /// Template id.
    pub template_id: String,
    /// Position in the build's log.
    pub offset: u64,
    /// RFC 3339 time.
    pub timestamp: String,
    /// What the entry reports.
    pub kind: LogKind,
    /// How much it matters.
    pub level: LogLevel,
    /// Human-readable text.
    pub message: String,
    /// Build phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<LogPhase>,
    /// 1-based step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_index: Option<u32>,
    /// Steps in the build.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_steps: Option<u32>,
    /// What a cache decision was about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_kind: Option<CacheKind>,
    /// The decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_status: Option<CacheStatus>,
    /// Why the cache missed or was bypassed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_reason: Option<String>,
    /// The readable target of the decision (a context path, a layer, a step).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_subject: Option<String>,
    /// Failure detail on `error` entries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_detail: Option<ErrorDetail>,
    /// Outcome on `end` entries: `ready`, `error` or `cancelled`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<BuildStatus>,
    /// Extra data on terminal entries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub result_metadata: Option<serde_json::Value>,
}

impl LogEntry {
    /// An entry of `kind` at `level` with `message`, stamped `timestamp`; offset and ids are
    /// filled in by the store.
    pub fn new(
        kind: LogKind,
        level: LogLevel,
        message: impl Into<String>,
        timestamp: String,
    ) -> LogEntry {
        LogEntry {
            build_id: String::new(),
            template_id: String::new(),
            offset: 0,
            timestamp,
            kind,
            level,
            message: message.into(),
            phase: None,
            step_index: None,
            total_steps: None,
            cache_kind: None,
            cache_status: None,
            cache_reason: None,
            cache_subject: None,
            error_detail: None,
            result: None,
            result_metadata: None,
        }
    }

    /// Sets the phase.
    pub fn phase(mut self, phase: LogPhase) -> LogEntry {
        self.phase = Some(phase);
        self
    }

    /// Sets the step.
    pub fn step(mut self, index: u32, total: u32) -> LogEntry {
        self.step_index = Some(index);
        self.total_steps = Some(total);
        self
    }
}

/// Counts of a build's cache decisions per kind (`cache_summary`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
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
    pub fn count(&mut self, kind: CacheKind, status: CacheStatus) {
        let counters = match kind {
            CacheKind::FinalArtifact => [
                &mut self.final_artifact_hits,
                &mut self.final_artifact_misses,
                &mut self.final_artifact_bypasses,
                &mut self.final_artifact_stores,
            ],
            CacheKind::Layer => [
                &mut self.layer_hits,
                &mut self.layer_misses,
                &mut self.layer_bypasses,
                &mut self.layer_stores,
            ],
            CacheKind::FileBlob => [
                &mut self.file_blob_hits,
                &mut self.file_blob_misses,
                &mut self.file_blob_bypasses,
                &mut self.file_blob_stores,
            ],
        };
        let [hits, misses, bypasses, stores] = counters;
        *match status {
            CacheStatus::Hit => hits,
            CacheStatus::Miss => misses,
            CacheStatus::Bypass => bypasses,
            CacheStatus::Stored => stores,
        } += 1;
    }
}
