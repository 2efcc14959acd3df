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
