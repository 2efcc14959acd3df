//! The VM layer end to end: real QEMU, the Debian kernel from the test environment and a rootfs
//! written by our own writer from the Debian fixture image.

#![allow(clippy::unwrap_used, clippy::expect_used)]
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use nullspace_init::protocol::{
    AgentMessage, HostMessage, Probe, ProbeCheck, StartSpec, StartState,
};
use nullspace_vm::kernel::GuestKernel;
use nullspace_vm::machine::{files, MachineDescription, MachineSize};
use nullspace_vm::{initramfs, AccelChoice, BootSpec, Disk, Qemu};

fn fixture_rootfs() -> &'static Path {
    static ROOTFS: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &ROOTFS
        .get_or_init(|| {
            let layout =
                PathBuf::from(std::env::var("NULLSPACE_FIXTURE_BASE_LAYOUT").expect(
                    "NULLSPACE_FIXTURE_BASE_LAYOUT is unset: run the tests with scripts/test",
                ));
            let blob = |digest: &str| {
                layout
                    .join("blobs/sha256")
                    .join(digest.trim_start_matches("sha256:"))
            };
            let index: serde_json::Value =
                serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
            let manifest: serde_json::Value = serde_json::from_slice(
                &std::fs::read(blob(index["manifests"][0]["digest"].as_str().unwrap())).unwrap(),
            )
            .unwrap();
            let layers: Vec<nullspace_rootfs::LayerInput> = manifest["layers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| nullspace_rootfs::LayerInput {
                    digest: l["digest"].as_str().unwrap().into(),
                    media_type: l["mediaType"].as_str().unwrap().into(),
                    diff_id: None,
                    path: blob(l["digest"].as_str().unwrap()),
                    size: l["size"].as_u64().unwrap(),
                })
                .collect();
            let dir = tempfile::tempdir().unwrap();
            let rootfs = dir.path().join("rootfs.ext4");
            nullspace_rootfs::build_rootfs(
                &layers,
                &rootfs,
                &nullspace_rootfs::RootfsOptions::default(),
                &nullspace_rootfs::NoProgress,
            )
            .unwrap();
            (dir, rootfs)
        })
        .1
}

fn kernel() -> GuestKernel {
    let dir = std::env::var("NULLSPACE_KERNEL")
        .expect("NULLSPACE_KERNEL is unset: run the tests with scripts/test");
    GuestKernel::find(Path::new(&dir)).unwrap()
}

fn qemu() -> Qemu {
    let accel =
        AccelChoice::parse(&std::env::var("NULLSPACE_VM_ACCEL").unwrap_or_default()).unwrap();
    Qemu::locate(None, accel).unwrap()
}

async fn next(
    vm: &mut nullspace_vm::RunningVm,
    want: impl Fn(&AgentMessage) -> bool,
) -> AgentMessage {
    loop {
        let message = vm
            .agent()
            .next(Duration::from_secs(60))
            .await
            .unwrap()
            .expect("the agent went quiet");
        if want(&message) {
            return message;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_snapshot_restores_with_the_start_command_still_running_and_the_agent_answering() {
    let qemu = qemu();
    let kernel = kernel();
    let dir = tempfile::tempdir().unwrap();
    let initramfs = initramfs::cached(&kernel, &dir.path().join("cache")).unwrap();
    let disk = dir.path().join("rootfs.ext4");
    std::fs::copy(fixture_rootfs(), &disk).unwrap();
    let snapshot = dir.path().join("snapshot");
    std::fs::create_dir(&snapshot).unwrap();
    std::fs::copy(&kernel.image, snapshot.join(files::KERNEL)).unwrap();
    std::fs::copy(&initramfs.path, snapshot.join(files::INITRAMFS)).unwrap();
    let size = MachineSize {
        cpu_count: 1,
        memory_mb: 256,
    };
    let spec = BootSpec {
        kernel: snapshot.join(files::KERNEL),
        initramfs: snapshot.join(files::INITRAMFS),
        disk: Disk {
            path: disk.clone(),
            overlay_dir: None,
        },
        memory_file: snapshot.join(files::MEMORY),
        size,
        network: None,
    };
    let mut vm = qemu.boot(&spec).await.unwrap();
    vm.agent()
        .send(&HostMessage::Start(StartSpec {
            hostname: "probe".into(),
            env: vec![("GREETING".into(), "hi".into())],
            workdir: Some("/srv/app".into()),
            command: Some("echo \"$GREETING from $(pwd)\"; while true; do date +%s > /tmp/tick; sleep 1; done".into()),
            readiness: Some(Probe {
                check: ProbeCheck::File { path: "/tmp/tick".into() },
                interval_ms: 100,
                timeout_ms: 1000,
                start_period_ms: 0,
                retries: 100,
            }),
            ..StartSpec::default()
        }))
        .await
        .unwrap();
    let log = next(&mut vm, |m| matches!(m, AgentMessage::Log { .. })).await;
    assert!(
        matches!(&log, AgentMessage::Log { line, .. } if line == "hi from /srv/app"),
        "{log:?}"
    );
    next(&mut vm, |m| matches!(m, AgentMessage::Ready { .. })).await;
    let before = vm.start_state().await.unwrap();
    assert!(matches!(before, StartState::Running { .. }), "{before:?}");
    let early = vm
        .exec("echo before", Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(early, (Some(0), "before\n".to_string()));
    let cmdline = vm.cmdline().to_string();
    let accel = vm.accel;
    vm.snapshot(&snapshot).await.unwrap();
    MachineDescription {
        vmm: "qemu".into(),
        vmm_version: qemu.version().into(),
        accel,
        machine: nullspace_vm::qemu::MACHINE.into(),
        cpu_model: String::new(),
        size,
        kernel_release: kernel.release.clone(),
        kernel_digest: kernel.digest().unwrap(),
        initramfs_digest: initramfs.digest.clone(),
        kernel_cmdline: cmdline,
        agent_version: nullspace_init::AGENT_VERSION.into(),
        network: None,
        memory_allocated_bytes: nullspace_vm::machine::allocated_bytes(
            &snapshot.join(files::MEMORY),
        ),
        state_bytes: std::fs::metadata(snapshot.join(files::STATE))
            .unwrap()
            .len(),
    }
    .write(&snapshot)
    .unwrap();

    let mut restored = qemu
        .restore(
            &snapshot,
            Disk {
                path: disk.clone(),
                overlay_dir: Some(std::env::temp_dir()),
            },
        )
        .await
        .unwrap();
    let after = restored.start_state().await.unwrap();
    assert_eq!(
        after, before,
        "the start command must not run again after a restore"
    );
    let (code, stdout) = restored
        .exec(
            "cat /proc/1/comm; hostname; cat /tmp/tick",
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert_eq!(code, Some(0), "{stdout}");
    assert!(stdout.starts_with("init\nprobe\n"), "{stdout:?}");
    restored.kill().await;
}
