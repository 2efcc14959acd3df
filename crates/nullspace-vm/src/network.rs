//! The build VM's network: `passt` (user-mode networking through host sockets, no privileges),
//! never QEMU's `-nic user`, whose gateway address forwards to the host's loopback. Our passt
//! configuration: IPv4 only, a fixed guest address, `--no-map-gw` (the gateway is not the host),
//! no port forwarding into the guest, DNS only through one forwarded address.
//!
//! passt cannot filter destinations: a guest with a network reaches what the host's own sockets
//! reach, private addresses included. A shared server therefore gives build VMs a network only
//! when its operator allows it (see the build crate's policy).

use std::ffi::OsString;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::process::{Child, Command};

use crate::error::VmError;

/// The guest side of the network, as the agent configures it on `eth0`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestNetwork {
    /// The guest's address.
    pub address: Ipv4Addr,
    /// Its prefix length.
    pub prefix: u8,
    /// The default route.
    pub gateway: Ipv4Addr,
    /// The resolver the guest uses (forwarded by passt to the host's).
    pub dns: Ipv4Addr,
    /// The NIC's MAC address.
    pub mac: [u8; 6],
}

impl Default for GuestNetwork {
    fn default() -> GuestNetwork {
        GuestNetwork {
            address: Ipv4Addr::new(10, 0, 2, 15),
            prefix: 24,
            gateway: Ipv4Addr::new(10, 0, 2, 2),
            dns: Ipv4Addr::new(10, 0, 2, 3),
            mac: [0x52, 0x54, 0x00, 0x12, 0x34, 0x56],
        }
    }
}

impl GuestNetwork {
    /// `52:54:00:12:34:56`.
    pub fn mac_text(&self) -> String {
        self.mac
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    }
}

/// Where passt's socket lives in a VM's run dir.
pub fn socket_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("passt")
}

/// passt's arguments for `network`, listening on `socket`.
pub fn passt_args(socket: &Path, network: &GuestNetwork) -> Vec<OsString> {
    let mut args: Vec<OsString> = Vec::new();
    let mut push = |items: &[&str]| args.extend(items.iter().map(OsString::from));
    push(&["--foreground", "--quiet", "--ipv4-only"]);
    push(&["--socket", &socket.to_string_lossy()]);
    push(&["--address", &network.address.to_string()]);
    push(&["--netmask", &network.prefix.to_string()]);
    push(&["--gateway", &network.gateway.to_string()]);
    // The gateway is just an address, never the host's loopback.
    push(&["--no-map-gw"]);
    // Only DNS sent to this address goes to the host's resolver.
    push(&["--dns-forward", &network.dns.to_string()]);
    push(&["--no-dhcp-dns", "--no-dhcp-search"]);
    // Nothing from outside reaches the guest.
    push(&["--tcp-ports", "none", "--udp-ports", "none"]);
    args
}

/// A running passt.
pub struct Passt {
    child: Child,
    /// Its socket (QEMU connects to it).
    pub socket: PathBuf,
}

impl Passt {
    /// Starts `passt` (from `PATH`) for `network` with its socket in `run_dir/passt/`.
    ///
    /// Started as root, passt drops to `nobody` before it binds its socket: its own dir then
    /// belongs to `nobody`, and the run dir lets others through (not list it).
    pub async fn start(run_dir: &Path, network: &GuestNetwork) -> Result<Passt, VmError> {
        let dir = socket_dir(run_dir);
        std::fs::create_dir(&dir).map_err(crate::error::io_at(&dir))?;
        if rustix::process::geteuid().is_root() {
            use std::os::unix::fs::PermissionsExt;
            let nobody = (
                rustix::fs::Uid::from_raw(65534),
                rustix::fs::Gid::from_raw(65534),
            );
            rustix::fs::chown(&dir, Some(nobody.0), Some(nobody.1))
                .map_err(|e| crate::error::io_at(&dir)(e.into()))?;
            std::fs::set_permissions(run_dir, std::fs::Permissions::from_mode(0o711))
                .map_err(crate::error::io_at(run_dir))?;
        }
        let socket = dir.join("passt.sock");
        let child = Command::new("passt")
            .args(passt_args(&socket, network))
            .env_clear()
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| VmError::QemuMissing {
                binary: "passt".into(),
                reason: format!("{e} (the build VM's network needs passt)"),
            })?;
        let mut passt = Passt { child, socket };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !passt.socket.exists() {
            if let Ok(Some(status)) = passt.child.try_wait() {
                return Err(VmError::BootFailed {
                    reason: format!("passt exited ({status}) before it listened"),
                    attempts: 1,
                    console: String::new(),
                });
            }
            if tokio::time::Instant::now() > deadline {
                return Err(VmError::TimedOut {
                    what: "passt's socket".into(),
                    seconds: 10,
                });
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(passt)
    }
}

impl Drop for Passt {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passt_never_maps_the_gateway_to_the_host_and_forwards_nothing_inwards() {
        let args: Vec<String> = passt_args(Path::new("/r/passt.sock"), &GuestNetwork::default())
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let text = args.join(" ");
        assert!(args.contains(&"--no-map-gw".to_string()), "{text}");
        assert!(text.contains("--tcp-ports none --udp-ports none"), "{text}");
        assert!(args.contains(&"--ipv4-only".to_string()), "{text}");
        assert!(
            text.contains("--address 10.0.2.15 --netmask 24 --gateway 10.0.2.2"),
            "{text}"
        );
        assert!(text.contains("--dns-forward 10.0.2.3"), "{text}");
        assert!(text.contains("--socket /r/passt.sock"), "{text}");
        // No option that would open the guest to the host or the host to the guest.
        for forbidden in ["-t", "-u", "--tcp-ports all", "--udp-ports all", "-T", "-U"] {
            assert!(
                !args.iter().any(|a| a == forbidden),
                "{forbidden} in {text}"
            );
        }
    }
}
