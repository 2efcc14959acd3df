//! Artifact upload and download throughput through object storage against copying the same
//! bytes on local disk with `cp` (the baseline), same run. The artifact is a sparse 1 GiB rootfs-like
//! file holding 192 MiB of incompressible data in scattered 16 MiB runs, plus a small file.
//!
//! `cargo run --release -p nullspace-build --example bench_object_storage -- <url> [endpoint]`
//! with `s3://bucket/prefix` and the S3 endpoint (`scripts/bench-cluster` runs moto's server),
//! credentials from the `AWS_*` variables; or `file:///dir`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::io::Write as _;
use std::os::unix::fs::FileExt as _;
use std::time::Instant;

use nullspace_build::object_storage::ObjectStorage;

const MIB: u64 = 1 << 20;

fn main() {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .expect("usage: bench_object_storage <url> [endpoint]");
    let endpoint = args.next();
    let work = tempfile::tempdir_in("/var/tmp").unwrap();
    let artifact = work.path().join("artifact");
    std::fs::create_dir_all(&artifact).unwrap();
    let rootfs = std::fs::File::create(artifact.join("rootfs.ext4")).unwrap();
    rootfs.set_len(1024 * MIB).unwrap();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut run = vec![0u8; (16 * MIB) as usize];
    for n in 0..12u64 {
        for word in run.chunks_mut(8) {
            // xorshift: incompressible, and never a zero chunk.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            word.copy_from_slice(&state.to_le_bytes());
        }
        rootfs.write_all_at(&run, n * 80 * MIB).unwrap();
    }
    rootfs.sync_all().unwrap();
    let mut small = std::fs::File::create(artifact.join("template.json")).unwrap();
    small.write_all(&[b'x'; 4096]).unwrap();
    let data_bytes = 12 * 16 * MIB + 4096;

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let storage = ObjectStorage::open(&url, endpoint.as_deref()).unwrap();
    let began = Instant::now();
    let sent = runtime
        .block_on(storage.upload_artifact(&artifact))
        .unwrap();
    let upload = began.elapsed();
    let began = Instant::now();
    let received = runtime
        .block_on(storage.download_artifact(
            &sent.manifest_digest,
            &work.path().join("staging"),
            &work.path().join("fetched"),
        ))
        .unwrap();
    let download = began.elapsed();
    assert_eq!(received.transferred_bytes, sent.transferred_bytes);

    // The baseline: the same dir copied on local disk by `cp` (which skips holes), flushed
    // like the download's files are.
    let began = Instant::now();
    let copied = std::process::Command::new("cp")
        .args(["-a", "--sparse=always"])
        .arg(&artifact)
        .arg(work.path().join("copy"))
        .status()
        .unwrap();
    assert!(copied.success());
    let synced = std::process::Command::new("sync")
        .arg("-f")
        .arg(work.path().join("copy"))
        .status()
        .unwrap();
    assert!(synced.success());
    let copy = began.elapsed();

    let rate = |seconds: f64| data_bytes as f64 / MIB as f64 / seconds;
    println!(
        "artifact: 1024 MiB logical, {} MiB of data; sent {:.1} MiB in {} chunk(s), {} skipped",
        data_bytes / MIB,
        sent.transferred_bytes as f64 / MIB as f64,
        sent.chunks_transferred,
        sent.chunks_skipped
    );
    println!(
        "  upload   {:>7.2} s  {:>8.1} MiB/s",
        upload.as_secs_f64(),
        rate(upload.as_secs_f64())
    );
    println!(
        "  download {:>7.2} s  {:>8.1} MiB/s (digests checked)",
        download.as_secs_f64(),
        rate(download.as_secs_f64())
    );
    println!(
        "  local copy {:>5.2} s  {:>8.1} MiB/s (baseline)",
        copy.as_secs_f64(),
        rate(copy.as_secs_f64())
    );
    println!(
        "  upload / local copy: {:.2}x the time; download / local copy: {:.2}x the time",
        upload.as_secs_f64() / copy.as_secs_f64(),
        download.as_secs_f64() / copy.as_secs_f64()
    );
}
