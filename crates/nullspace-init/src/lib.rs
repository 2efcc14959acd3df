//! The guest side of a Nullspace microVM: `nullspace-init` is PID 1 of every build VM and
//! sandbox (a static binary in the initramfs; see `main.rs`), and this library is what the host
//! and the agent share: the framed wire protocol of the virtio-serial channel, the runtime-user
//! rules and the readiness probe URL rules. Everything here is pure code that the host tests run.

pub mod protocol;
pub mod user;

/// The agent's version as announced in its hello: the crate version plus the protocol number.
pub const AGENT_VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), "+p", "3");

/// Name of the virtio-serial port that carries the channel.
pub const PORT_NAME: &str = "org.nullspace.agent";
