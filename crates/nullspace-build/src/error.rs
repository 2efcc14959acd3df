//! Build errors: each says what failed, where, and in which phase.

use std::path::PathBuf;

/// The phase a build failed in, as reported to users (`error_detail.phase`).
pub use nullspace_api::FailurePhase as Phase;

/// Why a build failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The request is invalid; nothing ran.
    #[error("invalid request: {field}: {message}")]
    InvalidRequest {
        /// The field at fault.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// Local configuration is unusable.
    #[error("configuration: {message}")]
    Config {
        /// What is wrong.
        message: String,
    },
    /// The image reference is malformed.
    #[error(transparent)]
    Reference(#[from] nullspace_oci::ReferenceError),
    /// The image could not be resolved or fetched.
    #[error(transparent)]
    Registry(#[from] nullspace_oci::Error),
    /// The image's layers or config could not be turned into a rootfs.
    #[error(transparent)]
    Rootfs(#[from] nullspace_rootfs::RootfsError),
    /// The image config is unreadable.
    #[error("image {image}: {source}")]
    ImageConfig {
        /// The image.
        image: String,
        /// The parse error.
        source: nullspace_rootfs::runtime::ConfigError,
    },
    /// BuildKit could not run or the Dockerfile build failed.
    #[error(transparent)]
    Buildkit(#[from] crate::buildkit::BuildkitError),
    /// The database failed.
    #[error("database {path}: {source}")]
    Database {
        /// The database file.
        path: PathBuf,
        /// The SQLite error.
        source: rusqlite::Error,
    },
    /// The database's schema could not be brought up to date.
    #[error("database {path}: {message}")]
    Migration {
        /// The database file.
        path: PathBuf,
        /// Which step failed and why.
        message: String,
    },
    /// A name or ref was not found.
    #[error("template {reference:?} not found")]
    NotFound {
        /// What was looked up.
        reference: String,
    },
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A file of the uploaded build context is unusable (its blob missing or damaged).
    #[error("build context file {path:?}: {message}")]
    FileUpload {
        /// The file's path inside the context.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// What the build reuses is gone; the template it starts from must be built again.
    #[error("rebuild required: {message}")]
    RebuildRequired {
        /// What is missing.
        message: String,
    },
    /// The build ran past the server's wall-clock budget and was stopped.
    #[error(
        "the build ran out of time: it was stopped after {seconds} s (the server's build_timeout)"
    )]
    TimedOut {
        /// The budget in seconds.
        seconds: u64,
    },
    /// No VM runtime here, and the template needs one (a start command, readiness, or a
    /// server that requires snapshots).
    #[error("this template needs a build VM (it has a start command or readiness, or the server requires snapshots), but {reason}")]
    VmUnavailable {
        /// What is missing.
        reason: String,
    },
    /// The build VM failed.
    #[error("build VM ({phase}): {source}")]
    Vm {
        /// When.
        phase: Phase,
        /// What failed.
        source: nullspace_vm::VmError,
    },
    /// The start command could not be started.
    #[error("the start command could not start: {message}")]
    StartFailed {
        /// Why (the runtime user, workdir or shell at fault).
        message: String,
    },
    /// The start command ended before it was ready (or with a failure status).
    #[error("the start command exited {} before the template was ready; its last output:\n{output}", describe_exit(*.code, *.signal))]
    StartExited {
        /// Exit status.
        code: Option<i32>,
        /// Signal that ended it.
        signal: Option<i32>,
        /// Its last lines of output.
        output: String,
    },
    /// The readiness probe failed or never passed.
    #[error("the template never became ready: the readiness probe failed after {attempts} attempt(s), last result: {detail}; the start command's last output:\n{output}")]
    NotReady {
        /// Attempts made.
        attempts: u32,
        /// The last attempt's result.
        detail: String,
        /// The start command's last lines of output.
        output: String,
    },
    /// A background task died.
    #[error("internal: {0}")]
    Internal(String),
}

impl BuildError {
    /// The phase this error belongs to.
    pub fn phase(&self) -> Phase {
        match self {
            BuildError::InvalidRequest { .. }
            | BuildError::Config { .. }
            | BuildError::Reference(_)
            | BuildError::FileUpload { .. }
            | BuildError::RebuildRequired { .. } => Phase::Prepare,
            BuildError::Registry(_) | BuildError::Rootfs(_) | BuildError::ImageConfig { .. } => {
                Phase::BaseImageImport
            }
            BuildError::Buildkit(_) => Phase::BuildSteps,
            BuildError::TimedOut { .. } => Phase::Build,
            BuildError::VmUnavailable { .. } => Phase::VmCreate,
            BuildError::Vm { phase, .. } => *phase,
            BuildError::StartFailed { .. } | BuildError::StartExited { .. } => Phase::Startup,
            BuildError::NotReady { .. } => Phase::Readiness,
            _ => Phase::Finalize,
        }
    }

    /// Whether a registry rejected the credentials (or their absence).
    pub fn is_authentication(&self) -> bool {
        matches!(
            self,
            BuildError::Registry(nullspace_oci::Error::AuthRejected { .. })
        )
    }

    /// A stable machine code for the error envelope.
    pub fn code(&self) -> &'static str {
        match self {
            BuildError::InvalidRequest { .. } | BuildError::Reference(_) => "invalid_request",
            BuildError::NotFound { .. } => "template_not_found",
            BuildError::FileUpload { .. } => "file_upload_error",
            BuildError::RebuildRequired { .. } => "rebuild_required",
            BuildError::Buildkit(crate::buildkit::BuildkitError::Unreachable { .. }) => {
                "buildkit_unavailable"
            }
            BuildError::TimedOut { .. } => "build_timeout",
            BuildError::VmUnavailable { .. } => "vm_unavailable",
            BuildError::Vm { source, .. } => source.code(),
            BuildError::StartFailed { .. } => "start_command_failed",
            BuildError::StartExited { .. } => "start_command_exited",
            BuildError::NotReady { .. } => "readiness_failed",
            _ => "build_error",
        }
    }
}

impl From<nullspace_api::FieldError> for BuildError {
    fn from(error: nullspace_api::FieldError) -> BuildError {
        BuildError::InvalidRequest {
            field: error.field,
            message: error.message,
        }
    }
}

/// `with status 3`, `on signal 9`.
fn describe_exit(code: Option<i32>, signal: Option<i32>) -> String {
    match (code, signal) {
        (Some(code), _) => format!("with status {code}"),
        (None, Some(signal)) => format!("on signal {signal}"),
        (None, None) => "for an unknown reason".into(),
    }
}

/// Shorthand for an [`BuildError::Io`] with its path.
pub(crate) fn io_at(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> BuildError + '_ {
    move |source| BuildError::Io {
        path: path.to_path_buf(),
        source,
    }
}
