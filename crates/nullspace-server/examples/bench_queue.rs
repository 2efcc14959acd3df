//! Queue claim latency with 1,000 queued builds: PostgreSQL (`FOR UPDATE SKIP LOCKED`, the
//! many-host store) against SQLite (the one-machine default, the baseline), same run.
//!
//! `cargo run --release -p nullspace-server --example bench_queue -- <postgres://.../db>`
//! (the database is emptied first; `scripts/bench-cluster` passes a fresh one).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::{Duration, Instant};

use nullspace_build::buildkit::BuildkitPolicy;
use nullspace_build::definition::{definition_from_body, RequestLimits};
use nullspace_server::entry::entry;
use nullspace_server::store::{BuildRecord, BuildStore, PgStore, Queueing, SqliteStore};

const QUEUED: usize = 1000;

fn record(n: usize, template_id: &str) -> BuildRecord {
    let body = serde_json::from_value(serde_json::json!({
        "name": "bench", "base_image": "debian:bookworm"
    }))
    .unwrap();
    let (definition, _) =
        definition_from_body(body, &RequestLimits::default(), &BuildkitPolicy::default()).unwrap();
    BuildRecord::waiting(
        format!("tb_bench{n:06}"),
        "bench",
        template_id.to_string(),
        definition,
        &nullspace_build::ids::now_rfc3339(),
    )
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Queues 1,000 builds, then claims them one by one; the claim latencies, sorted.
fn measure(store: &dyn BuildStore) -> Vec<Duration> {
    let template = store
        .ensure_template(
            "bench",
            "bench",
            "tmpl_bench",
            &nullspace_build::ids::now_rfc3339(),
        )
        .unwrap();
    let queued = entry(
        nullspace_api::LogKind::Message,
        nullspace_api::LogLevel::Info,
        "queued",
    );
    for n in 0..QUEUED {
        store
            .insert_build(&record(n, &template), &Queueing::default(), &queued)
            .unwrap();
    }
    let start = entry(
        nullspace_api::LogKind::Start,
        nullspace_api::LogLevel::Info,
        "build started",
    );
    let mut latencies = Vec::with_capacity(QUEUED);
    for _ in 0..QUEUED {
        let began = Instant::now();
        let claimed = store
            .claim_next(
                "bench-worker",
                Duration::from_secs(30),
                &nullspace_build::ids::now_rfc3339(),
                &start,
            )
            .unwrap();
        latencies.push(began.elapsed());
        assert!(claimed.is_some());
    }
    latencies.sort();
    latencies
}

fn main() {
    let url = std::env::args()
        .nth(1)
        .expect("usage: bench_queue postgres://user:password@host:port/db");
    let dir = tempfile::tempdir().unwrap();
    let sqlite = SqliteStore::open(&dir.path().join("nullspace.db")).unwrap();
    let postgres = PgStore::connect(&url).unwrap();
    let results = [
        ("sqlite (baseline)", measure(&sqlite)),
        ("postgresql", measure(&postgres)),
    ];
    println!("claim latency with {QUEUED} queued builds (claimed one by one, the queue draining):");
    for (name, latencies) in &results {
        println!(
            "  {name:<18} p50 {:>8.3} ms  p99 {:>8.3} ms",
            percentile(latencies, 0.5).as_secs_f64() * 1e3,
            percentile(latencies, 0.99).as_secs_f64() * 1e3
        );
    }
    let ratio =
        |p| percentile(&results[1].1, p).as_secs_f64() / percentile(&results[0].1, p).as_secs_f64();
    println!(
        "  postgresql / sqlite: p50 {:.2}x, p99 {:.2}x",
        ratio(0.5),
        ratio(0.99)
    );
}
