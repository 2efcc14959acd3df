//! Benchmark: restoring a template's snapshot until its agent answers, against a cold boot of
//! the same rootfs until its agent answers (what a user would otherwise do), in one run.
//!
//! `cargo run --release -p nullspace-vm --example bench_restore -- TEMPLATE_DIR [ROUNDS]`
//! where TEMPLATE_DIR is a published template with a snapshot (`rootfs.ext4`, `snapshot/`).
//! Prints the medians and their ratio. QEMU from `PATH`, acceleration from `NULLSPACE_VM_ACCEL`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use nullspace_vm::machine::{files, MachineDescription};
use nullspace_vm::{AccelChoice, BootSpec, Disk, Qemu};

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let template = PathBuf::from(
        args.next()
            .expect("usage: bench_restore TEMPLATE_DIR [ROUNDS]"),
    );
    let rounds: usize = args.next().map_or(5, |r| r.parse().expect("ROUNDS"));
    let snapshot = template.join("snapshot");
    let rootfs = template.join("rootfs.ext4");
    let machine = MachineDescription::read(&snapshot).unwrap();
    let accel =
        AccelChoice::parse(&std::env::var("NULLSPACE_VM_ACCEL").unwrap_or_default()).unwrap();
    let qemu = Qemu::locate(None, accel).unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let (mut restores, mut boots) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let started = Instant::now();
        let mut vm = qemu
            .restore(
                &snapshot,
                Disk {
                    path: rootfs.clone(),
                    overlay_dir: Some(std::env::temp_dir()),
                },
            )
            .await
            .unwrap();
        vm.start_state().await.unwrap();
        restores.push(started.elapsed());
        vm.kill().await;

        let spec = BootSpec {
            kernel: snapshot.join(files::KERNEL),
            initramfs: snapshot.join(files::INITRAMFS),
            disk: Disk {
                path: rootfs.clone(),
                overlay_dir: Some(std::env::temp_dir()),
            },
            memory_file: scratch.path().join(format!("memory-{round}")),
            size: machine.size,
            network: machine.network,
        };
        let started = Instant::now();
        let mut vm = qemu.boot(&spec).await.unwrap();
        boots.push(started.elapsed());
        vm.kill().await;
        let _ = std::fs::remove_file(scratch.path().join(format!("memory-{round}")));
    }
    let (restore, boot) = (median(restores), median(boots));
    println!(
        "restore to agent answer: {:.3} s (median of {rounds}); cold boot to agent answer: {:.3} s; cold boot / restore = {:.1}x",
        restore.as_secs_f64(),
        boot.as_secs_f64(),
        boot.as_secs_f64() / restore.as_secs_f64()
    );
    println!(
        "snapshot on disk: {:.1} MiB of RAM allocated for a {} MiB guest ({:.1}%), {:.1} KiB of device state",
        machine.memory_allocated_bytes as f64 / 1048576.0,
        machine.size.memory_mb,
        100.0 * machine.memory_allocated_bytes as f64 / (f64::from(machine.size.memory_mb) * 1048576.0),
        machine.state_bytes as f64 / 1024.0
    );
}
