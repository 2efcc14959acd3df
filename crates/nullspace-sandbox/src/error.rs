//! What can go wrong with a sandbox, each naming what to do.

use nullspace_vm::VmError;

/// A sandbox operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// No such sandbox for this owner.
    #[error("sandbox {0} not found")]
    NotFound(String),
    /// The sandbox ended; nothing more can run in it.
    #[error("sandbox {id} is not running: {reason}")]
    NotRunning {
        /// The sandbox.
        id: String,
        /// How it ended.
        reason: String,
    },
    /// No such command in the sandbox.
    #[error("command {0} not found in this sandbox")]
    CommandNotFound(String),
    /// An owner limit would be exceeded.
    #[error("{0}")]
    Quota(String),
    /// A request field is wrong.
    #[error("{field}: {message}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The template cannot be started here.
    #[error("the template cannot be started: {0}")]
    Unstartable(String),
    /// Starting or talking to the VM failed.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// A file request failed in the guest.
    #[error("{message}")]
    File {
        /// `not_found`, `permission_denied`, `is_a_directory`, `not_a_directory`,
        /// `too_large`, `invalid` or `io`.
        kind: String,
        /// What went wrong, naming the path.
        message: String,
    },
    /// The guest's agent broke the protocol, went away or did not answer.
    #[error("the sandbox's agent: {0}")]
    Agent(String),
    /// A host file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
}
