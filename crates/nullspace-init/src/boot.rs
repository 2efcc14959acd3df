//! From the initramfs into the template's rootfs: pseudo filesystems, kernel modules, the
//! rootfs on `/dev/vda` mounted read-write, then switch root (move it onto `/` and chroot). The
//! agent's own files stay in the initramfs (memory), so nothing of ours is written to the disk.

use std::path::Path;
use std::time::{Duration, Instant};

use rustix::mount::{mount, mount_move, MountFlags};

/// The rootfs device: the VM's first virtio-blk disk.
const ROOT_DEVICE: &str = "/dev/vda";
/// Where the rootfs is mounted before switching root.
const NEW_ROOT: &str = "/newroot";
/// Modules to load, one path per line in load order (written by the host's initramfs builder).
const MODULE_LIST: &str = "/nullspace/modules";

fn mount_at(
    source: &str,
    target: &str,
    fstype: &str,
    flags: MountFlags,
    data: &str,
) -> Result<(), String> {
    ensure_dir(target)?;
    let data = std::ffi::CString::new(data).map_err(|e| format!("mount options {data:?}: {e}"))?;
    mount(source, target, fstype, flags, Some(data.as_c_str()))
        .map_err(|e| format!("mount {fstype} on {target}: {e}"))
}

fn ensure_dir(path: &str) -> Result<(), String> {
    if Path::new(path).is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(path).map_err(|e| format!("creating {path}: {e}"))
}

fn load_modules() -> Result<(), String> {
    let list = std::fs::read_to_string(MODULE_LIST).map_err(|e| format!("{MODULE_LIST}: {e}"))?;
    for module in list.lines().filter(|l| !l.trim().is_empty()) {
        let file = std::fs::File::open(module).map_err(|e| format!("module {module}: {e}"))?;
        match rustix::system::finit_module(&file, c"", 0) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(format!("loading module {module}: {e}")),
        }
    }
    Ok(())
}

fn wait_for(path: &str, limit: Duration) -> Result<(), String> {
    let start = Instant::now();
    while !Path::new(path).exists() {
        if start.elapsed() > limit {
            return Err(format!(
                "{path} did not appear within {limit:?} (no rootfs disk?)"
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// Mounts the rootfs and makes it `/`, with `/proc`, `/sys`, `/dev`, `/dev/pts`, `/dev/shm`,
/// `/run` and `/tmp` mounted in it.
pub fn switch_root() -> Result<(), String> {
    let none = MountFlags::empty();
    mount_at("proc", "/proc", "proc", none, "")?;
    mount_at("sysfs", "/sys", "sysfs", none, "")?;
    mount_at("devtmpfs", "/dev", "devtmpfs", none, "mode=0755")?;
    load_modules()?;
    wait_for(ROOT_DEVICE, Duration::from_secs(30))?;
    mount_at(ROOT_DEVICE, NEW_ROOT, "ext4", none, "")?;
    for pseudo in ["/dev", "/proc", "/sys"] {
        let target = format!("{NEW_ROOT}{pseudo}");
        ensure_dir(&target)?;
        mount_move(pseudo, &target).map_err(|e| format!("moving {pseudo} into the rootfs: {e}"))?;
    }
    std::env::set_current_dir(NEW_ROOT).map_err(|e| format!("chdir {NEW_ROOT}: {e}"))?;
    mount_move(".", "/").map_err(|e| format!("moving the rootfs onto /: {e}"))?;
    rustix::process::chroot(".").map_err(|e| format!("chroot: {e}"))?;
    std::env::set_current_dir("/").map_err(|e| format!("chdir /: {e}"))?;
    let hidden = MountFlags::NOSUID | MountFlags::NOEXEC;
    mount_at(
        "devpts",
        "/dev/pts",
        "devpts",
        hidden,
        "newinstance,ptmxmode=0666,mode=0620,gid=5",
    )?;
    mount_at(
        "shm",
        "/dev/shm",
        "tmpfs",
        MountFlags::NOSUID | MountFlags::NODEV,
        "mode=1777",
    )?;
    mount_at(
        "run",
        "/run",
        "tmpfs",
        MountFlags::NOSUID | MountFlags::NODEV,
        "mode=0755",
    )?;
    mount_at(
        "tmp",
        "/tmp",
        "tmpfs",
        MountFlags::NOSUID | MountFlags::NODEV,
        "mode=1777",
    )?;
    Ok(())
}

/// Milliseconds since the guest booted (`/proc/uptime`).
pub fn uptime_ms() -> u64 {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0, |secs| (secs * 1000.0) as u64)
}

/// Ends the VM (PID 1 must never exit: the kernel would panic instead).
pub fn power_off() -> ! {
    rustix::fs::sync();
    let _ = rustix::system::reboot(rustix::system::RebootCommand::PowerOff);
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
