//! The QEMU driver: `-M microvm` with ACPI, guest RAM in a file (`memory-backend-file`), the
//! rootfs on virtio-blk, the agent on virtio-serial, QMP on a unix socket. KVM where it boots,
//! TCG otherwise. Boots that stall (TCG on a busy host can hang in early boot) are killed and
//! retried. Snapshots migrate only device and CPU state (`x-ignore-shared`); restores map the
//! RAM file copy-on-write.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::process::Command;

use crate::channel::AgentChannel;
use crate::error::{io_at, VmError};
use crate::machine::{files, Accel, MachineDescription, MachineSize};
use crate::network::{GuestNetwork, Passt};
use crate::qmp::Qmp;
use crate::running::{RunningVm, Started};

/// The machine type.
pub const MACHINE: &str = "microvm,acpi=on,memory-backend=ram0";

/// Boot attempts before giving up (a stalled boot is killed and retried).
const BOOT_ATTEMPTS: u32 = 3;
/// A boot whose console stays silent this long before the agent answers has stalled (the
/// kernel is verbose on the console, so a healthy boot is never silent for long).
const STALL: Duration = Duration::from_secs(15);
/// The same for KVM under `auto`: a guest KVM cannot run goes silent after the firmware.
const KVM_PROBE_STALL: Duration = Duration::from_secs(3);
/// Longest boot under TCG.
const BOOT_LIMIT: Duration = Duration::from_secs(120);
/// Longest try of KVM under `auto` before falling back to TCG.
const KVM_PROBE_LIMIT: Duration = Duration::from_secs(10);

/// Set once KVM failed to boot a guest here, so `auto` goes straight to TCG afterwards.
static KVM_BROKEN: AtomicBool = AtomicBool::new(false);

/// How to pick acceleration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccelChoice {
    /// KVM if it boots the guest, else TCG.
    Auto,
    /// Only this one.
    Only(Accel),
}

impl AccelChoice {
    /// `auto` (or empty), `kvm` or `tcg`.
    pub fn parse(text: &str) -> Result<AccelChoice, String> {
        match text {
            "" | "auto" => Ok(AccelChoice::Auto),
            "kvm" => Ok(AccelChoice::Only(Accel::Kvm)),
            "tcg" => Ok(AccelChoice::Only(Accel::Tcg)),
            other => Err(format!("{other:?} is not auto, kvm or tcg")),
        }
    }
}

/// Whether `/dev/kvm` can be opened.
pub fn kvm_present() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

/// The host's TSC frequency in kHz (`cpu MHz` of `/proc/cpuinfo`), for `tsc_early_khz`: under
/// TCG on a busy host the guest's own calibration can hang the boot.
pub fn host_tsc_khz() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("cpu MHz"))?;
    let mhz: f64 = line.split(':').nth(1)?.trim().parse().ok()?;
    Some((mhz * 1000.0) as u64)
}

/// The rootfs disk of a VM.
#[derive(Clone, Debug)]
pub struct Disk {
    /// The raw image.
    pub path: PathBuf,
    /// When set, writes go to a throw-away copy-on-write overlay that QEMU creates (and
    /// unlinks at once) in this directory, and `path` is opened read-only, so any number of
    /// VMs can share it. When `None`, the VM writes to `path` itself.
    pub overlay_dir: Option<PathBuf>,
}

/// What to boot.
#[derive(Clone, Debug)]
pub struct BootSpec {
    /// Kernel image.
    pub kernel: PathBuf,
    /// Initramfs.
    pub initramfs: PathBuf,
    /// The rootfs.
    pub disk: Disk,
    /// Guest RAM file (created; shared, so a snapshot can keep it).
    pub memory_file: PathBuf,
    /// Size.
    pub size: MachineSize,
    /// A network card on passt, or none.
    pub network: Option<GuestNetwork>,
}

/// A located QEMU.
#[derive(Clone, Debug)]
pub struct Qemu {
    binary: PathBuf,
    version: String,
    accel: AccelChoice,
    /// Where `auto` remembers that KVM failed on this host (see [`Qemu::remember_kvm_in`]).
    kvm_verdict: Option<PathBuf>,
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

impl Qemu {
    /// Finds QEMU (`binary`, else `qemu-system-x86_64` on `PATH`) and reads its version.
    pub fn locate(binary: Option<PathBuf>, accel: AccelChoice) -> Result<Qemu, VmError> {
        let name = "qemu-system-x86_64";
        let binary = match binary {
            Some(b) => b,
            None => find_on_path(name).ok_or_else(|| VmError::QemuMissing {
                binary: name.into(),
                reason: "not on PATH".into(),
            })?,
        };
        let output = std::process::Command::new(&binary)
            .arg("--version")
            .env_clear()
            .output()
            .map_err(|e| VmError::QemuMissing {
                binary: binary.display().to_string(),
                reason: e.to_string(),
            })?;
        let version = String::from_utf8_lossy(&output.stdout)
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_string();
        if !output.status.success() || version.is_empty() {
            return Err(VmError::QemuMissing {
                binary: binary.display().to_string(),
                reason: format!("--version exited {}", output.status),
            });
        }
        Ok(Qemu {
            binary,
            version,
            accel,
            kvm_verdict: None,
        })
    }

    /// Under `auto`, remembers in `file` that KVM did not boot a guest on this host (with
    /// this QEMU and host kernel), so later processes go straight to TCG instead of spending
    /// the KVM probe again.
    pub fn remember_kvm_in(mut self, file: PathBuf) -> Qemu {
        self.kvm_verdict = Some(file);
        self
    }

    /// What the verdict file says of this host: it applies only to the same QEMU and host
    /// kernel.
    fn host_fingerprint(&self) -> String {
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        format!("kvm-failed {} | {}", self.version, kernel.trim())
    }

    fn kvm_known_broken(&self) -> bool {
        KVM_BROKEN.load(Ordering::Relaxed)
            || self
                .kvm_verdict
                .as_ref()
                .and_then(|f| std::fs::read_to_string(f).ok())
                .is_some_and(|text| text.trim() == self.host_fingerprint())
    }

    fn record_kvm_broken(&self) {
        KVM_BROKEN.store(true, Ordering::Relaxed);
        if let Some(file) = &self.kvm_verdict {
            if let Some(parent) = file.parent() {
                let _ = std::fs::create_dir_all(parent);
            }
            let _ = std::fs::write(file, self.host_fingerprint());
        }
    }

    /// `--version`'s first line.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The kernel command line of our guests.
    pub fn kernel_cmdline() -> String {
        let mut cmdline = String::from("console=ttyS0 panic=-1 rdinit=/init");
        if let Some(khz) = host_tsc_khz() {
            cmdline.push_str(&format!(" tsc_early_khz={khz}"));
        }
        cmdline
    }

    /// QEMU's arguments for `spec` (`incoming`: wait for a restore's state).
    pub fn args(
        spec: &BootSpec,
        accel: Accel,
        cmdline: &str,
        run_dir: &Path,
        incoming: bool,
    ) -> Vec<OsString> {
        let mut args: Vec<OsString> = Vec::new();
        let mut push = |items: &[&str]| args.extend(items.iter().map(OsString::from));
        push(&["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"]);
        push(&["-M", MACHINE, "-accel", accel.as_str()]);
        push(&["-cpu", cpu_model(accel)]);
        push(&["-smp", &spec.size.cpu_count.to_string()]);
        push(&["-m", &format!("{}M", spec.size.memory_mb)]);
        let memory = format!(
            "memory-backend-file,id=ram0,size={}M,mem-path={},{}",
            spec.size.memory_mb,
            spec.memory_file.display(),
            if incoming {
                "share=off,readonly=on,rom=off"
            } else {
                "share=on"
            }
        );
        push(&["-object", &memory]);
        push(&["-kernel", &spec.kernel.to_string_lossy()]);
        push(&["-initrd", &spec.initramfs.to_string_lossy()]);
        push(&["-append", cmdline]);
        push(&[
            "-serial",
            &format!("file:{}", run_dir.join("console.log").display()),
        ]);
        push(&[
            "-drive",
            &format!(
                "id=root,file={},format=raw,if=none,cache=writeback,snapshot={}",
                spec.disk.path.display(),
                if spec.disk.overlay_dir.is_some() {
                    "on"
                } else {
                    "off"
                }
            ),
        ]);
        push(&["-device", "virtio-blk-device,drive=root"]);
        push(&["-device", "virtio-serial-device"]);
        push(&[
            "-chardev",
            &format!(
                "socket,id=agent,path={},server=on,wait=off",
                run_dir.join("agent.sock").display()
            ),
        ]);
        push(&[
            "-device",
            &format!(
                "virtserialport,chardev=agent,name={}",
                nullspace_init::PORT_NAME
            ),
        ]);
        push(&[
            "-qmp",
            &format!(
                "unix:{},server=on,wait=off",
                run_dir.join("qmp.sock").display()
            ),
        ]);
        if let Some(network) = &spec.network {
            push(&[
                "-netdev",
                &format!(
                    "stream,id=net0,server=off,addr.type=unix,addr.path={}",
                    crate::network::socket_dir(run_dir)
                        .join("passt.sock")
                        .display()
                ),
            ]);
            push(&[
                "-device",
                &format!("virtio-net-device,netdev=net0,mac={}", network.mac_text()),
            ]);
        }
        if incoming {
            push(&["-incoming", "defer"]);
        }
        args
    }

    /// Starts QEMU (and passt for a network) for `spec`, connects QMP, loads the snapshot
    /// state `incoming` names, and connects the agent channel. The caller waits for the hello.
    async fn start(
        &self,
        spec: &BootSpec,
        accel: Accel,
        cmdline: &str,
        incoming: Option<&Path>,
    ) -> Result<RunningVm, VmError> {
        let run_dir = tempfile::Builder::new()
            .prefix("nsvm-")
            .tempdir_in(short_tmp())
            .map_err(io_at(Path::new("/tmp")))?;
        let passt = match &spec.network {
            Some(network) => Some(Passt::start(run_dir.path(), network).await?),
            None => None,
        };
        let log_path = run_dir.path().join("qemu.log");
        let log = std::fs::File::create(&log_path).map_err(io_at(&log_path))?;
        let mut command = Command::new(&self.binary);
        command.env_clear();
        end_with_this_process(&mut command);
        if let Some(dir) = &spec.disk.overlay_dir {
            // QEMU puts `snapshot=on` overlays in its TMPDIR.
            command.env("TMPDIR", dir);
        }
        let child = command
            .args(Qemu::args(
                spec,
                accel,
                cmdline,
                run_dir.path(),
                incoming.is_some(),
            ))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| VmError::QemuMissing {
                binary: self.binary.display().to_string(),
                reason: e.to_string(),
            })?;
        let started = Started {
            child,
            run_dir,
            accel,
            passt,
        };
        let connected = async {
            let run_dir = started.run_dir.path();
            let mut qmp = Qmp::connect(&run_dir.join("qmp.sock"), Duration::from_secs(10)).await?;
            if let Some(state) = incoming {
                load_state(&mut qmp, state).await?;
            }
            let agent =
                AgentChannel::connect(&run_dir.join("agent.sock"), Duration::from_secs(10)).await?;
            Ok::<_, VmError>((qmp, agent))
        }
        .await;
        match connected {
            Ok((qmp, agent)) => Ok(started.running(qmp, agent, cmdline)),
            Err(e) => Err(started.failure(e.to_string(), 1).await),
        }
    }

    /// Boots `spec` until the agent answers: KVM first under `auto` (unless it failed here
    /// before), TCG otherwise; stalled boots are retried.
    pub async fn boot(&self, spec: &BootSpec) -> Result<RunningVm, VmError> {
        let accels: &[Accel] = match self.accel {
            AccelChoice::Only(accel) => &[accel][..],
            AccelChoice::Auto if kvm_present() && !self.kvm_known_broken() => {
                &[Accel::Kvm, Accel::Tcg]
            }
            AccelChoice::Auto => &[Accel::Tcg],
        };
        let cmdline = Qemu::kernel_cmdline();
        let mut last = None;
        for (i, accel) in accels.iter().enumerate() {
            let falls_back = i + 1 < accels.len();
            for attempt in 1..=BOOT_ATTEMPTS {
                let started = Instant::now();
                let result = self
                    .boot_once(spec, *accel, &cmdline, falls_back, attempt)
                    .await;
                match result {
                    Ok(mut vm) => {
                        vm.boot_time = started.elapsed();
                        tracing::info!(
                            accel = accel.as_str(),
                            ms = vm.boot_time.as_millis() as u64,
                            "VM booted"
                        );
                        return Ok(vm);
                    }
                    Err(e @ VmError::BootFailed { .. }) if falls_back => {
                        tracing::warn!(error = %e, "KVM did not boot the guest here; using TCG");
                        self.record_kvm_broken();
                        last = Some(e);
                        break;
                    }
                    Err(e @ VmError::BootFailed { .. }) => {
                        tracing::warn!(attempt, error = %e, "boot failed; retrying");
                        last = Some(e);
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Err(last.unwrap_or(VmError::BootFailed {
            reason: "no acceleration to try".into(),
            attempts: 0,
            console: String::new(),
        }))
    }

    async fn boot_once(
        &self,
        spec: &BootSpec,
        accel: Accel,
        cmdline: &str,
        probing: bool,
        attempt: u32,
    ) -> Result<RunningVm, VmError> {
        let mut vm = self.start(spec, accel, cmdline, None).await?;
        let (limit, stall) = if probing {
            (KVM_PROBE_LIMIT, KVM_PROBE_STALL)
        } else {
            (BOOT_LIMIT, STALL)
        };
        match vm.wait_for_agent(limit, stall).await {
            Ok(()) => Ok(vm),
            Err(reason) => {
                let console = vm.console_tail(30);
                vm.kill().await;
                Err(VmError::BootFailed {
                    reason,
                    attempts: attempt,
                    console,
                })
            }
        }
    }

    /// Restores the snapshot in `snapshot_dir` with `disk` as its rootfs, until the agent
    /// answers. Refused with `rebuild_required` when this host's QEMU or acceleration differs
    /// from the snapshot's.
    pub async fn restore(&self, snapshot_dir: &Path, disk: Disk) -> Result<RunningVm, VmError> {
        let machine = MachineDescription::read(snapshot_dir)?;
        if machine.vmm != "qemu" || machine.vmm_version != self.version {
            return Err(VmError::RebuildRequired(format!(
                "it was taken with {} {:?}, this host runs {:?}",
                machine.vmm, machine.vmm_version, self.version
            )));
        }
        if machine.accel == Accel::Kvm && !kvm_present() {
            return Err(VmError::RebuildRequired(
                "it was taken under KVM, this host has none".into(),
            ));
        }
        if machine.agent_version != nullspace_init::AGENT_VERSION {
            return Err(VmError::RebuildRequired(format!(
                "its agent is {}, this host's is {}",
                machine.agent_version,
                nullspace_init::AGENT_VERSION
            )));
        }
        let spec = BootSpec {
            kernel: snapshot_dir.join(files::KERNEL),
            initramfs: snapshot_dir.join(files::INITRAMFS),
            disk,
            memory_file: snapshot_dir.join(files::MEMORY),
            size: machine.size,
            network: machine.network,
        };
        let started = Instant::now();
        let state = snapshot_dir.join(files::STATE);
        let mut vm = self
            .start(&spec, machine.accel, &machine.kernel_cmdline, Some(&state))
            .await?;
        if let Err(reason) = vm
            .wait_for_agent(Duration::from_secs(30), Duration::from_secs(30))
            .await
        {
            let console = vm.console_tail(30);
            vm.kill().await;
            return Err(VmError::BootFailed {
                reason: format!("restored VM: {reason}"),
                attempts: 1,
                console,
            });
        }
        vm.boot_time = started.elapsed();
        Ok(vm)
    }
}

/// Makes the kernel kill the child when the thread that started it ends: a VM never outlives
/// the server (or CLI) that ran it, even when that is killed with SIGKILL.
#[allow(unsafe_code)]
fn end_with_this_process(command: &mut Command) {
    // SAFETY: the closure runs in the forked child before exec, where only async-signal-safe
    // work is allowed: it makes one raw prctl(PR_SET_PDEATHSIG) system call through rustix and
    // allocates nothing.
    unsafe {
        command.pre_exec(|| {
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
                .map_err(std::io::Error::from)
        });
    }
}

fn cpu_model(accel: Accel) -> &'static str {
    match accel {
        Accel::Kvm => "host",
        Accel::Tcg => "max",
    }
}

/// Loads a snapshot's device and CPU state into a QEMU started with `-incoming defer`, then
/// lets it run.
async fn load_state(qmp: &mut Qmp, state: &Path) -> Result<(), VmError> {
    qmp.execute("migrate-set-capabilities", ignore_shared())
        .await?;
    qmp.execute(
        "migrate-incoming",
        json!({"uri": format!("file:{}", state.display())}),
    )
    .await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while qmp.status().await? == "inmigrate" {
        if Instant::now() > deadline {
            return Err(VmError::TimedOut {
                what: "loading the snapshot state".into(),
                seconds: 60,
            });
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    qmp.execute("cont", json!({})).await?;
    Ok(())
}

pub(crate) fn ignore_shared() -> serde_json::Value {
    json!({"capabilities": [{"capability": "x-ignore-shared", "state": true}]})
}

/// `/tmp` (unix socket paths must stay under 108 bytes, whatever `TMPDIR` says).
fn short_tmp() -> PathBuf {
    let tmp = PathBuf::from("/tmp");
    if tmp.is_dir() {
        tmp
    } else {
        std::env::temp_dir()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> BootSpec {
        BootSpec {
            kernel: "/k/vmlinuz".into(),
            initramfs: "/k/initramfs".into(),
            disk: Disk {
                path: "/t/rootfs.ext4".into(),
                overlay_dir: None,
            },
            memory_file: "/t/snapshot/memory".into(),
            size: MachineSize {
                cpu_count: 2,
                memory_mb: 768,
            },
            network: None,
        }
    }

    fn joined(args: &[OsString]) -> String {
        args.iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn a_build_vm_shares_its_ram_file_and_has_no_network() {
        let args = joined(&Qemu::args(
            &spec(),
            Accel::Tcg,
            "console=ttyS0",
            Path::new("/r"),
            false,
        ));
        assert!(
            args.contains("-M microvm,acpi=on,memory-backend=ram0 -accel tcg"),
            "{args}"
        );
        assert!(args.contains("-smp 2 -m 768M"), "{args}");
        assert!(
            args.contains("size=768M,mem-path=/t/snapshot/memory,share=on"),
            "{args}"
        );
        assert!(
            args.contains("file=/t/rootfs.ext4,format=raw,if=none,cache=writeback,snapshot=off")
        );
        assert!(args.contains("virtserialport,chardev=agent,name=org.nullspace.agent"));
        assert!(
            args.starts_with("-nodefaults"),
            "no default NIC or devices: {args}"
        );
        for network in ["-nic", "-netdev", "user", "hostfwd"] {
            assert!(
                !args.split(' ').any(|a| a == network),
                "{network} in {args}"
            );
        }
        assert!(!args.contains("-incoming"));
    }

    #[test]
    fn a_network_is_a_virtio_nic_on_passts_socket_never_user_mode_networking() {
        let mut spec = spec();
        spec.network = Some(GuestNetwork::default());
        let args = joined(&Qemu::args(&spec, Accel::Tcg, "c", Path::new("/r"), false));
        assert!(
            args.contains(
                "-netdev stream,id=net0,server=off,addr.type=unix,addr.path=/r/passt/passt.sock"
            ),
            "{args}"
        );
        assert!(
            args.contains("virtio-net-device,netdev=net0,mac=52:54:00:12:34:56"),
            "{args}"
        );
        assert!(!args.contains("user,") && !args.contains("hostfwd") && !args.contains("-nic"));
    }

    #[test]
    fn a_kvm_verdict_holds_only_for_the_same_qemu_and_host_kernel() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("vm/kvm-verdict");
        let qemu = Qemu {
            binary: "/usr/bin/qemu-system-x86_64".into(),
            version: "QEMU emulator version 10.0.2".into(),
            accel: AccelChoice::Auto,
            kvm_verdict: None,
        }
        .remember_kvm_in(file.clone());
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, qemu.host_fingerprint()).unwrap();
        let other = Qemu {
            version: "QEMU emulator version 11.0.0".into(),
            ..qemu.clone()
        };
        assert!(!other.kvm_known_broken(), "another QEMU probes KVM again");
        assert!(qemu.kvm_known_broken());
        std::fs::write(&file, "kvm-failed something else").unwrap();
        assert!(!other.kvm_known_broken());
    }

    #[test]
    fn a_restore_maps_ram_privately_and_waits_for_its_state() {
        let mut spec = spec();
        spec.disk.overlay_dir = Some("/s".into());
        let args = joined(&Qemu::args(&spec, Accel::Tcg, "c", Path::new("/r"), true));
        assert!(args.contains("share=off,readonly=on,rom=off"), "{args}");
        assert!(args.ends_with("-incoming defer"), "{args}");
        assert!(args.contains("snapshot=on"), "{args}");
    }
}
