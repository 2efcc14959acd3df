//! What the operator configures, read once by the binary and passed in: this library reads
//! no environment variables at request time.

use nullspace_build::definition::RequestLimits;
use nullspace_build::dockerfile::BuildkitPolicy;

/// The server's limits and policies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerSettings {
    /// Limits on what one request may carry.
    pub limits: RequestLimits,
    /// Largest build-context file blob accepted.
    pub max_upload_bytes: u64,
    /// What Dockerfiles may do.
    pub policy: BuildkitPolicy,
}

impl Default for ServerSettings {
    fn default() -> ServerSettings {
        ServerSettings {
            limits: RequestLimits::default(),
            max_upload_bytes: 4 << 30,
            policy: BuildkitPolicy::default(),
        }
    }
}
