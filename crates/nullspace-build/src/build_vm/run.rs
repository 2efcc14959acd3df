//! Running the build VM: boot the staged rootfs, start the command, wait for readiness, take
//! the snapshot; the guest's output and results enter the build log through bounds.

use super::*;
use crate::error::{io_at, Phase};
use crate::events::{BuildEvent, EventSink};

/// Copies a (sparse) file, keeping its holes, then renames it over `path`: the staged rootfs
/// may be a hard link into the rootfs cache, which the VM must never write.
fn unshare_file(path: &Path) -> Result<(), BuildError> {
    use std::io::{Read, Seek, SeekFrom, Write};
    let copy = path.with_extension("ext4.vm");
    let mut source = std::fs::File::open(path).map_err(io_at(path))?;
    let length = source.metadata().map_err(io_at(path))?.len();
    let mut target = std::fs::File::create(&copy).map_err(io_at(&copy))?;
    target.set_len(length).map_err(io_at(&copy))?;
    let mut offset = 0u64;
    let mut buffer = vec![0u8; 1 << 20];
    while offset < length {
        let data = match rustix::fs::seek(&source, rustix::fs::SeekFrom::Data(offset)) {
            Ok(at) => at,
            Err(rustix::io::Errno::NXIO) => break,
            Err(e) => return Err(io_at(path)(e.into())),
        };
        let hole = rustix::fs::seek(&source, rustix::fs::SeekFrom::Hole(data))
            .map_err(|e| io_at(path)(e.into()))?;
        source.seek(SeekFrom::Start(data)).map_err(io_at(path))?;
        target.seek(SeekFrom::Start(data)).map_err(io_at(&copy))?;
        let mut left = hole - data;
        while left > 0 {
            let chunk = left.min(buffer.len() as u64) as usize;
            source
                .read_exact(&mut buffer[..chunk])
                .map_err(io_at(path))?;
            target.write_all(&buffer[..chunk]).map_err(io_at(&copy))?;
            left -= chunk as u64;
        }
        offset = hole;
    }
    target.sync_all().map_err(io_at(&copy))?;
    std::fs::rename(&copy, path).map_err(io_at(path))
}

/// Hard-links `from` to `to`, copying when they are on different filesystems.
fn link_or_copy(from: &Path, to: &Path) -> Result<(), BuildError> {
    if std::fs::hard_link(from, to).is_ok() {
        return Ok(());
    }
    std::fs::copy(from, to).map(|_| ()).map_err(io_at(to))
}

fn vm_error(phase: Phase) -> impl FnOnce(VmError) -> BuildError {
    move |source| BuildError::Vm { phase, source }
}

struct Output {
    tail: VecDeque<String>,
    logged: usize,
    dropped: u64,
}

/// Text from the guest (which may be hostile: any process in it can write to the agent's
/// port), cut to the length the log keeps.
fn guest_text(mut text: String) -> String {
    truncate_line(&mut text, MAX_LOG_LINE_BYTES);
    text
}

impl Output {
    /// Whether one more guest-made log entry fits the build's budget (else it is counted).
    fn admit(&mut self) -> bool {
        if self.logged < MAX_LOGGED_LINES {
            self.logged += 1;
            true
        } else {
            self.dropped = self.dropped.saturating_add(1);
            false
        }
    }

    fn line(&mut self, events: &dyn EventSink, stream: Stream, line: String) {
        let stream = match stream {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        };
        let line = guest_text(line);
        if self.tail.len() == OUTPUT_TAIL {
            self.tail.pop_front();
        }
        self.tail.push_back(format!("[{stream}] {line}"));
        if self.admit() {
            events.event(BuildEvent::GuestOutput { stream, line });
        }
    }

    /// Takes the lines still on their way after the start command ended.
    async fn drain(&mut self, vm: &mut RunningVm, events: &dyn EventSink) {
        while let Ok(Some(AgentMessage::Log { stream, line })) =
            vm.agent().next(Duration::from_millis(200)).await
        {
            self.line(events, stream, line);
        }
    }

    fn tail(&self) -> String {
        if self.tail.is_empty() {
            "(no output)".into()
        } else {
            self.tail.iter().cloned().collect::<Vec<_>>().join("\n")
        }
    }
}

fn vm_event(events: &dyn EventSink, phase: LogPhase, level: LogLevel, message: String) {
    events.event(BuildEvent::Vm {
        phase,
        level,
        message,
    });
}

/// Boots the staged rootfs, runs the start command to readiness and snapshots the VM into
/// `<staging>/snapshot`.
pub async fn run(
    runtime: &VmRuntime,
    job: &VmJob<'_>,
    cache_key: String,
    events: Arc<dyn EventSink>,
) -> Result<SnapshotRecord, BuildError> {
    let events = &*events;
    unshare_file(job.rootfs)?;
    let dir = job.staging.join(SNAPSHOT_DIR);
    std::fs::create_dir_all(&dir).map_err(io_at(&dir))?;
    link_or_copy(&runtime.kernel.image, &dir.join(files::KERNEL))?;
    link_or_copy(&runtime.initramfs.path, &dir.join(files::INITRAMFS))?;
    let probe = job.runtime.readiness.as_ref().map(probe).transpose()?;
    vm_event(
        events,
        LogPhase::VmCreate,
        LogLevel::Info,
        format!(
            "booting the build VM: {} vCPU, {} MiB, kernel {}, {}",
            job.size.cpu_count,
            job.size.memory_mb,
            runtime.kernel.release,
            runtime.qemu.version()
        ),
    );
    let spec = BootSpec {
        kernel: dir.join(files::KERNEL),
        initramfs: dir.join(files::INITRAMFS),
        disk: Disk {
            path: job.rootfs.to_path_buf(),
            overlay_dir: None,
        },
        memory_file: dir.join(files::MEMORY),
        size: job.size,
        network: job.network,
    };
    let mut vm = runtime
        .qemu
        .boot(&spec)
        .await
        .map_err(vm_error(Phase::VmCreate))?;
    vm_event(
        events,
        LogPhase::VmCreate,
        LogLevel::Info,
        format!(
            "build VM up in {:.1} s ({})",
            vm.boot_time.as_secs_f64(),
            match vm.accel {
                nullspace_vm::Accel::Kvm => "KVM",
                nullspace_vm::Accel::Tcg => "TCG: software emulation, no usable KVM here",
            }
        ),
    );
    let start = super::start_spec(job.name, job.runtime, probe.clone(), job.network);
    let started = Instant::now();
    vm.agent()
        .send(&HostMessage::Start(start))
        .await
        .map_err(vm_error(Phase::Startup))?;
    if let Some(command) = &job.runtime.start_cmd {
        vm_event(
            events,
            LogPhase::Startup,
            LogLevel::Info,
            format!("start command: {command}"),
        );
    }
    let deadline = started
        + match &probe {
            Some(probe) => probe_budget(probe),
            None => Duration::from_millis(SETTLE_MS),
        };
    let mut output = Output {
        tail: VecDeque::new(),
        logged: 0,
        dropped: 0,
    };
    let mut running = job.runtime.start_cmd.is_some();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let message = if left.is_zero() {
            None
        } else {
            vm.agent()
                .next(left)
                .await
                .map_err(vm_error(Phase::Startup))?
        };
        match message {
            None if probe.is_none() => {
                if running {
                    vm_event(
                        events,
                        LogPhase::Startup,
                        LogLevel::Info,
                        format!("start command still running after {SETTLE_MS} ms (no readiness probe): snapshotting it running"),
                    );
                }
                break;
            }
            None => {
                return Err(BuildError::NotReady {
                    attempts: 0,
                    detail: format!(
                        "the probe gave no verdict within {} s",
                        deadline.duration_since(started).as_secs()
                    ),
                    output: output.tail(),
                })
            }
            Some(AgentMessage::Log { stream, line }) => output.line(events, stream, line),
            Some(AgentMessage::LogsDropped { count }) => {
                output.dropped = output.dropped.saturating_add(count)
            }
            Some(AgentMessage::StartFailed { message }) => {
                return Err(BuildError::StartFailed {
                    message: guest_text(message),
                })
            }
            Some(AgentMessage::Started { start }) => {
                if let StartState::Running { pid, .. } = start {
                    vm_event(
                        events,
                        LogPhase::Startup,
                        LogLevel::Info,
                        format!("start command running as pid {pid}"),
                    );
                }
            }
            Some(AgentMessage::Exited { start }) => {
                running = false;
                let StartState::Exited { code, signal } = start else {
                    continue;
                };
                output.drain(&mut vm, events).await;
                if probe.is_none() && code == Some(0) {
                    events.event(BuildEvent::Warning {
                        message: "the start command exited with status 0 before the snapshot, so nothing of it is left running in the template (an interactive program like a shell exits at once without a terminal)".into(),
                    });
                    break;
                }
                return Err(BuildError::StartExited {
                    code,
                    signal,
                    output: output.tail(),
                });
            }
            Some(AgentMessage::ProbeResult {
                attempt,
                ok,
                detail,
            }) => {
                if output.admit() {
                    vm_event(
                        events,
                        LogPhase::Readiness,
                        LogLevel::Debug,
                        format!(
                            "readiness attempt {attempt}: {} ({})",
                            if ok { "passed" } else { "not yet" },
                            guest_text(detail)
                        ),
                    );
                }
            }
            Some(AgentMessage::Ready { after_ms }) => {
                vm_event(
                    events,
                    LogPhase::Readiness,
                    LogLevel::Info,
                    format!("ready after {after_ms} ms"),
                );
                break;
            }
            Some(AgentMessage::NotReady { attempts, detail }) => {
                return Err(BuildError::NotReady {
                    attempts,
                    detail: guest_text(detail),
                    output: output.tail(),
                })
            }
            Some(_) => {}
        }
    }
    let ready_ms = started.elapsed().as_millis() as u64;
    if output.dropped > 0 {
        events.event(BuildEvent::Warning {
            message: format!(
                "the build VM logged its limit of {MAX_LOGGED_LINES} lines of output and readiness results; {} more were not logged",
                output.dropped
            ),
        });
    }
    let state = vm.start_state().await.map_err(vm_error(Phase::Snapshot))?;
    let accel = vm.accel;
    let boot_ms = vm.boot_time.as_millis() as u64;
    let cmdline = vm.cmdline().to_string();
    vm_event(
        events,
        LogPhase::Sync,
        LogLevel::Info,
        "syncing the guest's filesystems".into(),
    );
    let snapshot_started = Instant::now();
    vm.snapshot(&dir).await.map_err(vm_error(Phase::Snapshot))?;
    let snapshot_ms = snapshot_started.elapsed().as_millis() as u64;
    let memory = dir.join(files::MEMORY);
    let state_path = dir.join(files::STATE);
    let machine = MachineDescription {
        vmm: "qemu".into(),
        vmm_version: runtime.qemu.version().to_string(),
        accel,
        machine: nullspace_vm::qemu::MACHINE.into(),
        cpu_model: match accel {
            nullspace_vm::Accel::Kvm => "host".into(),
            nullspace_vm::Accel::Tcg => "max".into(),
        },
        size: job.size,
        kernel_release: runtime.kernel.release.clone(),
        kernel_digest: runtime.kernel_digest.clone(),
        initramfs_digest: runtime.initramfs.digest.clone(),
        kernel_cmdline: cmdline,
        agent_version: nullspace_init::AGENT_VERSION.into(),
        network: job.network,
        memory_allocated_bytes: allocated_bytes(&memory),
        state_bytes: std::fs::metadata(&state_path)
            .map_err(io_at(&state_path))?
            .len(),
    };
    machine.write(&dir).map_err(vm_error(Phase::Snapshot))?;
    vm_event(
        events,
        LogPhase::Snapshot,
        LogLevel::Info,
        format!(
            "snapshot taken in {snapshot_ms} ms: {:.1} MiB of {} MiB guest RAM on disk, {:.1} KiB of device state",
            machine.memory_allocated_bytes as f64 / 1048576.0,
            job.size.memory_mb,
            machine.state_bytes as f64 / 1024.0
        ),
    );
    Ok(SnapshotRecord {
        path: SNAPSHOT_DIR.into(),
        machine,
        start: state,
        cache_key,
        boot_ms,
        ready_ms,
        snapshot_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sparse_rootfs_is_copied_with_its_holes_and_contents() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rootfs.ext4");
        let file = std::fs::File::create(&path).unwrap();
        file.set_len(64 << 20).unwrap();
        use std::os::unix::fs::FileExt;
        file.write_all_at(b"head", 0).unwrap();
        file.write_all_at(b"middle", 32 << 20).unwrap();
        drop(file);
        let link = dir.path().join("cache.ext4");
        std::fs::hard_link(&path, &link).unwrap();
        unshare_file(&path).unwrap();
        let copied = std::fs::read(&path).unwrap();
        assert_eq!(copied, std::fs::read(&link).unwrap());
        assert_eq!(&copied[32 << 20..(32 << 20) + 6], b"middle");
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.nlink(), 1, "no longer the cache's inode");
        assert!(
            meta.blocks() * 512 < 1 << 20,
            "holes kept: {} bytes",
            meta.blocks() * 512
        );
    }

    #[test]
    fn a_flooding_guest_gets_a_bounded_log() {
        let events = std::sync::Mutex::new(Vec::new());
        let sink = |e: BuildEvent| events.lock().unwrap().push(e);
        let mut output = Output {
            tail: VecDeque::new(),
            logged: 0,
            dropped: 0,
        };
        for _ in 0..MAX_LOGGED_LINES + 10 {
            output.line(&sink, Stream::Stdout, "x".repeat(1 << 20));
        }
        assert!(!output.admit(), "probe results share the spent budget");
        let logged = events.lock().unwrap();
        assert_eq!(logged.len(), MAX_LOGGED_LINES);
        assert_eq!(output.dropped, 11);
        assert!(logged.iter().all(|e| matches!(e,
            BuildEvent::GuestOutput { line, .. } if line.len() <= MAX_LOG_LINE_BYTES + 8)));
        assert!(output.tail().len() <= OUTPUT_TAIL * (MAX_LOG_LINE_BYTES + 20));
    }
}
