//! What `/metrics` reports for one process, in Prometheus' text exposition format: the
//! shared queue's depth, this process's claims, ends, build durations and cache decisions.

use std::fmt::Write as _;

use nullspace_api::BuildStatus;

use crate::config::Deployment;
use crate::entry::CacheSummary;
use crate::store::{Finish, QueueDepth};

/// Upper bounds (seconds) of the build duration histogram's buckets.
const DURATION_BUCKETS: [f64; 9] = [1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0];

/// Counters since this process started.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Builds this process claimed.
    pub claims: u64,
    /// Builds taken over after their worker's lease lapsed (requeued or failed).
    pub lease_takeovers: u64,
    ready: u64,
    error: u64,
    cancelled: u64,
    duration_buckets: [u64; DURATION_BUCKETS.len()],
    duration_count: u64,
    duration_sum_seconds: f64,
    cache: CacheSummary,
}

impl Metrics {
    /// Counts an end this process recorded.
    pub fn record(&mut self, finish: &Finish) {
        match finish.status {
            BuildStatus::Ready => self.ready += 1,
            BuildStatus::Cancelled => self.cancelled += 1,
            _ => self.error += 1,
        }
        if let Some(ms) = finish.duration_ms {
            let seconds = ms as f64 / 1000.0;
            self.duration_count += 1;
            self.duration_sum_seconds += seconds;
            for (bound, count) in DURATION_BUCKETS.iter().zip(&mut self.duration_buckets) {
                if seconds <= *bound {
                    *count += 1;
                }
            }
        }
        if let Some(summary) = &finish.cache_summary {
            let c = &mut self.cache;
            c.final_artifact_hits += summary.final_artifact_hits;
            c.final_artifact_misses += summary.final_artifact_misses;
            c.layer_hits += summary.layer_hits;
            c.layer_misses += summary.layer_misses;
            c.file_blob_hits += summary.file_blob_hits;
            c.file_blob_misses += summary.file_blob_misses;
        }
    }

    /// The exposition text.
    pub fn render(&self, depth: &QueueDepth, running: usize, deployment: &Deployment) -> String {
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, String)]| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        let plain = |value: u64| vec![(String::new(), value.to_string())];
        metric(
            "nullspace_info",
            "gauge",
            "This process's role (its host name stays private: tenants can read this).",
            &[(
                format!("{{role=\"{}\"}}", deployment.role.as_str()),
                "1".into(),
            )],
        );
        metric(
            "nullspace_queue_builds",
            "gauge",
            "Builds in the shared queue by status.",
            &[
                ("{status=\"waiting\"}".into(), depth.waiting.to_string()),
                ("{status=\"building\"}".into(), depth.building.to_string()),
            ],
        );
        metric(
            "nullspace_builds_running",
            "gauge",
            "Builds this process runs now.",
            &plain(running as u64),
        );
        metric(
            "nullspace_build_claims_total",
            "counter",
            "Builds this process claimed from the queue.",
            &plain(self.claims),
        );
        metric(
            "nullspace_lease_takeovers_total",
            "counter",
            "Builds this process took over after their worker's lease lapsed.",
            &plain(self.lease_takeovers),
        );
        metric(
            "nullspace_builds_finished_total",
            "counter",
            "Build ends this process recorded, by status.",
            &[
                ("{status=\"ready\"}".into(), self.ready.to_string()),
                ("{status=\"error\"}".into(), self.error.to_string()),
                ("{status=\"cancelled\"}".into(), self.cancelled.to_string()),
            ],
        );
        let mut histogram: Vec<(String, String)> = DURATION_BUCKETS
            .iter()
            .zip(&self.duration_buckets)
            .map(|(bound, count)| (format!("_bucket{{le=\"{bound}\"}}"), count.to_string()))
            .collect();
        histogram.push((
            "_bucket{le=\"+Inf\"}".into(),
            self.duration_count.to_string(),
        ));
        histogram.push(("_sum".into(), format!("{:.3}", self.duration_sum_seconds)));
        histogram.push(("_count".into(), self.duration_count.to_string()));
        metric(
            "nullspace_build_duration_seconds",
            "histogram",
            "Running time of the builds this process ended.",
            &histogram,
        );
        let c = &self.cache;
        let mut cache = Vec::new();
        for (kind, hits, misses) in [
            (
                "final_artifact",
                c.final_artifact_hits,
                c.final_artifact_misses,
            ),
            ("layer", c.layer_hits, c.layer_misses),
            ("file_blob", c.file_blob_hits, c.file_blob_misses),
        ] {
            cache.push((
                format!("{{kind=\"{kind}\",result=\"hit\"}}"),
                hits.to_string(),
            ));
            cache.push((
                format!("{{kind=\"{kind}\",result=\"miss\"}}"),
                misses.to_string(),
            ));
        }
        metric(
            "nullspace_cache_lookups_total",
            "counter",
            "Cache decisions of the builds this process ended (hit rate = hit / (hit + miss)).",
            &cache,
        );
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn exposition_has_the_queue_ends_and_histogram() {
        let mut metrics = Metrics::default();
        metrics.record(&Finish {
            status: BuildStatus::Ready,
            finished_at: String::new(),
            duration_ms: Some(12_000),
            failure_phase: None,
            error_message: None,
            result: None,
            cache_summary: None,
            worker: None,
        });
        let text = metrics.render(
            &QueueDepth {
                waiting: 3,
                building: 1,
            },
            1,
            &Deployment::default(),
        );
        assert!(text.contains("nullspace_queue_builds{status=\"waiting\"} 3\n"));
        assert!(text.contains("nullspace_builds_finished_total{status=\"ready\"} 1\n"));
        assert!(text.contains("nullspace_build_duration_seconds_bucket{le=\"5\"} 0\n"));
        assert!(text.contains("nullspace_build_duration_seconds_bucket{le=\"15\"} 1\n"));
        assert!(text.contains("nullspace_build_duration_seconds_count 1\n"));
        // Every sample line is `name{labels} value` or `name value`.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert_eq!(line.split(' ').count(), 2, "{line}");
        }
    }
}
