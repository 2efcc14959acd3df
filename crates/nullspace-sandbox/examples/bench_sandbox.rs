//! Benchmark (not a test; `scripts/bench-sandbox` runs it): sandboxes of one template.
//!
//! 1. create-to-first-command-result from the template's snapshot vs a cold boot of the same
//!    template (same rootfs, start command and readiness), `ROUNDS` each;
//! 2. memory of 10 sandboxes of the template: each QEMU's PSS, shared and private
//!    (`/proc/PID/smaps_rollup`), against 10 x the guest's memory;
//! 3. a command's round trip through the agent vs `docker exec` in a container (`CONTAINER`,
//!    started by the script from the same image).
//!
//! Usage: `bench_sandbox ARTIFACT_DIR CONTAINER [ROUNDS]`; the template's start command must
//! serve HTTP on 8080 (the first command fetches from it).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nullspace_init::protocol::{Probe, ProbeCheck, StartSpec};
use nullspace_sandbox::{
    CommandSpec, Ledger, Limits, Sandbox, SandboxState, Sandboxes, TemplateImage,
};
use nullspace_vm::{AccelChoice, MachineSize, Qemu};

struct Quiet;
impl Ledger for Quiet {
    fn ended(&self, _: &Sandbox, _: &SandboxState) {}
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

/// `(pss, shared, private)` in KiB.
fn memory(pid: u32) -> (u64, u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap();
    let field = |name: &str| -> u64 {
        text.lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum()
    };
    (
        field("Pss:"),
        field("Shared_Clean:") + field("Shared_Dirty:"),
        field("Private_Clean:") + field("Private_Dirty:"),
    )
}

async fn first_result(sandboxes: &Arc<Sandboxes>, image: &TemplateImage) -> (f64, Arc<Sandbox>) {
    let started = Instant::now();
    let sandbox = sandboxes
        .create("bench", image, vec![], Duration::from_secs(600))
        .await
        .unwrap();
    let command = sandbox
        .run(&CommandSpec {
            shell: Some("busybox wget -qO- http://127.0.0.1:8080/ >/dev/null".into()),
            timeout: Some(Duration::from_secs(60)),
            ..CommandSpec::default()
        })
        .await
        .unwrap();
    let end = command.wait().await;
    assert_eq!(end.exit_code, Some(0), "{end:?}");
    (started.elapsed().as_secs_f64(), sandbox)
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let artifact = PathBuf::from(args.next().expect("ARTIFACT_DIR"));
    let container = args.next().expect("CONTAINER");
    let rounds: usize = args.next().map_or(3, |r| r.parse().unwrap());
    let document: serde_json::Value =
        serde_json::from_slice(&std::fs::read(artifact.join("template.json")).unwrap()).unwrap();
    let machine = &document["snapshot"]["machine"];
    let size = MachineSize {
        cpu_count: machine["size"]["cpu_count"].as_u64().unwrap() as u32,
        memory_mb: machine["size"]["memory_mb"].as_u64().unwrap() as u32,
    };
    let snapshot = artifact.join("snapshot");
    let defaults = &document["runtime_defaults"];
    let image = TemplateImage {
        reference: "bench".into(),
        build_id: document["build_id"].as_str().unwrap().into(),
        rootfs: artifact.join("rootfs.ext4"),
        snapshot: Some(snapshot.clone()),
        size,
        defaults: StartSpec {
            hostname: "bench".into(),
            command: defaults["start_cmd"].as_str().map(str::to_string),
            readiness: Some(Probe {
                check: ProbeCheck::Tcp { port: 8080 },
                interval_ms: 100,
                timeout_ms: 1000,
                start_period_ms: 0,
                retries: 600,
            }),
            ..StartSpec::default()
        },
        boot_files: Some((snapshot.join("vmlinuz"), snapshot.join("initramfs.cpio"))),
    };
    let cold = TemplateImage {
        snapshot: None,
        ..image.clone()
    };
    // Cold boots use the snapshot's acceleration too, so both sides run alike.
    let accel = match machine["accel"].as_str() {
        Some("kvm") => nullspace_vm::Accel::Kvm,
        _ => nullspace_vm::Accel::Tcg,
    };
    let qemu = Qemu::locate(None, AccelChoice::Only(accel)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits {
        max_per_owner: 64,
        max_memory_mb_per_owner: 1 << 20,
        ..Limits::default()
    };
    let sandboxes = Arc::new(
        Sandboxes::new(qemu, dir.path().join("sandboxes"), limits, Arc::new(Quiet)).unwrap(),
    );

    let (mut restored, mut booted) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let (seconds, sandbox) = first_result(&sandboxes, &image).await;
        restored.push(seconds);
        sandbox
            .end(nullspace_sandbox::EndReason::Killed, "bench")
            .await;
        let (seconds, sandbox) = first_result(&sandboxes, &cold).await;
        booted.push(seconds);
        sandbox
            .end(nullspace_sandbox::EndReason::Killed, "bench")
            .await;
    }
    let (restored, booted) = (median(restored), median(booted));
    println!(
        "create to first command result: from the snapshot {restored:.3} s, cold boot of the same template {booted:.3} s ({:.1}x faster), median of {rounds}",
        booted / restored
    );

    let mut ten = Vec::new();
    for _ in 0..10 {
        ten.push(first_result(&sandboxes, &image).await.1);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (mut pss, mut shared, mut private) = (0, 0, 0);
    for sandbox in &ten {
        let (p, s, v) = memory(sandbox.pid.unwrap());
        pss += p;
        shared += s;
        private += v;
    }
    let budget = 10 * u64::from(size.memory_mb) * 1024;
    println!(
        "10 sandboxes of a {} MiB template: total PSS {:.1} MiB = {:.1}% of 10 x {} MiB; per sandbox PSS {:.1} MiB, shared {:.1} MiB, private {:.1} MiB",
        size.memory_mb,
        pss as f64 / 1024.0,
        100.0 * pss as f64 / budget as f64,
        size.memory_mb,
        pss as f64 / 10240.0,
        shared as f64 / 10240.0,
        private as f64 / 10240.0
    );

    let sandbox = &ten[0];
    let calls = 50;
    let started = Instant::now();
    for _ in 0..calls {
        let command = sandbox
            .run(&CommandSpec {
                argv: vec!["true".into()],
                ..CommandSpec::default()
            })
            .await
            .unwrap();
        assert_eq!(command.wait().await.exit_code, Some(0));
    }
    let agent = started.elapsed().as_secs_f64() / calls as f64;
    let started = Instant::now();
    for _ in 0..calls {
        let status = std::process::Command::new("docker")
            .args(["exec", &container, "true"])
            .status()
            .unwrap();
        assert!(status.success());
    }
    let docker = started.elapsed().as_secs_f64() / calls as f64;
    println!(
        "command round trip (`true`, mean of {calls}): through the agent {:.1} ms, docker exec {:.1} ms ({:.1}x)",
        agent * 1000.0,
        docker * 1000.0,
        docker / agent
    );
    for sandbox in ten {
        sandbox
            .end(nullspace_sandbox::EndReason::Killed, "bench")
            .await;
    }
}
