//! The guest's loopback interface: up, so that services and probes can use 127.0.0.1.

/// Sets `IFF_UP` on `lo`.
#[allow(unsafe_code)]
pub fn loopback_up() -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let socket = rustix::net::socket(
        rustix::net::AddressFamily::INET,
        rustix::net::SocketType::DGRAM,
        None,
    )?;
    // SAFETY: `ifreq` is plain old data, so all-zero is a valid value; the name copied in is
    // 2 bytes plus the zero terminator, within `ifr_name`'s 16; both ioctls get a pointer to
    // this live, properly aligned struct and an open socket, as SIOCGIFFLAGS/SIOCSIFFLAGS
    // require, and write at most the struct's own size.
    unsafe {
        let mut request: libc::ifreq = std::mem::zeroed();
        for (slot, byte) in request.ifr_name.iter_mut().zip(b"lo\0") {
            *slot = *byte as libc::c_char;
        }
        if libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS, &mut request) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        request.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFFLAGS, &request) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The kernel's `struct rtentry` (`linux/route.h`), for `SIOCADDRT`; the `libc` crate has it
/// only for musl.
#[repr(C)]
struct RouteEntry {
    rt_pad1: libc::c_ulong,
    rt_dst: libc::sockaddr,
    rt_gateway: libc::sockaddr,
    rt_genmask: libc::sockaddr,
    rt_flags: libc::c_ushort,
    rt_pad2: libc::c_short,
    rt_pad3: libc::c_ulong,
    rt_pad4: *mut libc::c_void,
    rt_metric: libc::c_short,
    rt_dev: *mut libc::c_char,
    rt_mtu: libc::c_ulong,
    rt_window: libc::c_ulong,
    rt_irtt: libc::c_ushort,
}

/// An IPv4 `sockaddr` (the `sockaddr_in` layout in a plain `sockaddr`).
fn sockaddr_v4(address: std::net::Ipv4Addr) -> libc::sockaddr {
    let mut raw = [0u8; std::mem::size_of::<libc::sockaddr>()];
    raw[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
    raw[4..8].copy_from_slice(&address.octets());
    let mut data = [0 as libc::c_char; 14];
    for (slot, byte) in data.iter_mut().zip(&raw[2..]) {
        *slot = *byte as libc::c_char;
    }
    libc::sockaddr {
        sa_family: libc::AF_INET as libc::sa_family_t,
        sa_data: data,
    }
}

/// Configures `eth0` as the host said (IPv4 only: IPv6 is switched off first, so the guest
/// sends nothing it was not asked to), with a default route and the resolver in a
/// `/etc/resolv.conf` bind-mounted from `/run` (the image's file on disk stays as it is).
#[allow(unsafe_code)]
pub fn configure(network: &nullspace_init::protocol::NetworkConfig) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    for scope in ["all", "default"] {
        let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{scope}/disable_ipv6"), "1");
    }
    let mut waited = 0;
    while !std::path::Path::new("/sys/class/net/eth0").exists() {
        if waited > 500 {
            return Err(std::io::Error::other("no eth0 (virtio_net)"));
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
        waited += 1;
    }
    let _ = std::fs::write("/proc/sys/net/ipv6/conf/eth0/disable_ipv6", "1");
    let socket = rustix::net::socket(
        rustix::net::AddressFamily::INET,
        rustix::net::SocketType::DGRAM,
        None,
    )?;
    let mask = if network.prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(network.prefix.min(32)))
    };
    let check = |result: libc::c_int| {
        if result < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(())
        }
    };
    // SAFETY: `ifreq` and `RouteEntry` are plain old data (all-zero is valid); the interface
    // name "eth0" plus its terminator fits `ifr_name`; every ioctl gets an open socket and a
    // pointer to a live, aligned struct of the type that request reads or writes
    // (SIOCSIFADDR/SIOCSIFNETMASK/SIOCGIFFLAGS/SIOCSIFFLAGS: `ifreq`; SIOCADDRT: `rtentry`),
    // and the kernel writes at most that struct's size. `rt_dev` stays null (no device name).
    unsafe {
        let mut request: libc::ifreq = std::mem::zeroed();
        for (slot, byte) in request.ifr_name.iter_mut().zip(b"eth0\0") {
            *slot = *byte as libc::c_char;
        }
        request.ifr_ifru.ifru_addr = sockaddr_v4(network.address);
        check(libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFADDR, &request))?;
        request.ifr_ifru.ifru_netmask = sockaddr_v4(std::net::Ipv4Addr::from(mask));
        check(libc::ioctl(
            socket.as_raw_fd(),
            libc::SIOCSIFNETMASK,
            &request,
        ))?;
        check(libc::ioctl(
            socket.as_raw_fd(),
            libc::SIOCGIFFLAGS,
            &mut request,
        ))?;
        request.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        check(libc::ioctl(
            socket.as_raw_fd(),
            libc::SIOCSIFFLAGS,
            &request,
        ))?;
        let mut route: RouteEntry = std::mem::zeroed();
        route.rt_dst = sockaddr_v4(std::net::Ipv4Addr::UNSPECIFIED);
        route.rt_genmask = sockaddr_v4(std::net::Ipv4Addr::UNSPECIFIED);
        route.rt_gateway = sockaddr_v4(network.gateway);
        route.rt_flags = libc::RTF_UP | libc::RTF_GATEWAY;
        check(libc::ioctl(socket.as_raw_fd(), libc::SIOCADDRT, &route))?;
    }
    let resolv = "/run/nullspace/resolv.conf";
    std::fs::create_dir_all("/run/nullspace")?;
    std::fs::write(resolv, format!("nameserver {}\n", network.dns))?;
    if std::path::Path::new("/etc/resolv.conf").is_file() {
        rustix::mount::mount_bind(resolv, "/etc/resolv.conf")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_sockaddrs_carry_family_and_address_where_the_kernel_reads_them() {
        let raw = sockaddr_v4(std::net::Ipv4Addr::new(10, 0, 2, 15));
        assert_eq!(raw.sa_family, libc::AF_INET as libc::sa_family_t);
        // sockaddr_in: port (2 bytes), then the address.
        let bytes: Vec<u8> = raw.sa_data.iter().map(|b| *b as u8).collect();
        assert_eq!(&bytes[..6], &[0, 0, 10, 0, 2, 15]);
        assert_eq!(
            std::mem::size_of::<RouteEntry>(),
            120,
            "struct rtentry on x86_64"
        );
    }
}
