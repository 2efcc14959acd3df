//! What the operator configures, read once by the binary and passed in: this library reads
//! no environment variables at request time.

use nullspace_build::definition::RequestLimits;

/// The server's limits (what Dockerfiles may do is the engine's [`BuildkitOptions`]
/// policy, set with [`crate::ServerConfig::buildkit`]).
///
/// [`BuildkitOptions`]: nullspace_build::engine_dockerfile::BuildkitOptions
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerSettings {
    /// Limits on what one request may carry.
    pub limits: RequestLimits,
    /// Largest build-context file blob accepted.
    pub max_upload_bytes: u64,
}

impl Default for ServerSettings {
    fn default() -> ServerSettings {
        ServerSettings {
            limits: RequestLimits::default(),
            max_upload_bytes: 4 << 30,
        }
    }
}
