//! What can go wrong talking to the server or reading the local build context.

use std::path::PathBuf;

use serde_json::Value;

/// A client error. API errors keep the server's envelope; local ones name the file.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server could not be reached, or the connection broke.
    #[error("connecting to the build server at {url}: {source}")]
    Transport {
        /// The server's base URL.
        url: String,
        /// The HTTP client's error.
        source: reqwest::Error,
    },
    /// The server answered with an error envelope (`{error, code, ...}`), or a non-2xx status
    /// shaped into one.
    #[error("{message} ({code})")]
    Api {
        /// HTTP status.
        status: u16,
        /// Stable machine code (`invalid_request`, `template_build_not_found`, ...).
        code: String,
        /// Readable message.
        message: String,
        /// The whole envelope.
        envelope: Value,
    },
    /// The server's answer is not what the API promises.
    #[error("reading the build server's answer ({what}): {message}")]
    Decode {
        /// What was being read.
        what: &'static str,
        /// Why it could not be read.
        message: String,
    },
    /// The log stream was lost and could not be resumed within the retry budget.
    #[error("the log stream of build {build_id} was lost and could not be resumed: {message}")]
    StreamLost {
        /// The build.
        build_id: String,
        /// The last failure.
        message: String,
    },
    /// A file of the local build context cannot be sent (missing, excluded, not UTF-8).
    #[error("build context file {path:?}: {message}")]
    FileUpload {
        /// The context path.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// A `.dockerignore` pattern Docker would refuse.
    #[error("{file}: {message}")]
    Ignore {
        /// The file (and line).
        file: String,
        /// What is wrong.
        message: String,
    },
    /// Reading a local file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

impl ClientError {
    /// A stable machine code, the same as the server's for the same failure.
    pub fn code(&self) -> &str {
        match self {
            ClientError::Api { code, .. } => code,
            ClientError::Transport { .. } | ClientError::StreamLost { .. } => "connection_error",
            ClientError::Decode { .. } => "invalid_response",
            ClientError::FileUpload { .. } | ClientError::Io { .. } => "file_upload_error",
            ClientError::Ignore { .. } => "invalid_request",
        }
    }

    /// Whether trying again later may succeed: the server was unreachable, or answered
    /// 502, 503 or 504 (a proxy in front of a restarting server).
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Transport { source, .. } => {
                source.is_connect()
                    || source.is_timeout()
                    || source.is_request()
                    || source.is_body()
            }
            ClientError::Api { status, .. } => matches!(status, 502..=504),
            _ => false,
        }
    }
}

/// Shorthand for [`ClientError::Io`] at `path`.
pub(crate) fn io_at(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> ClientError + '_ {
    move |source| ClientError::Io {
        path: path.to_path_buf(),
        source,
    }
}
