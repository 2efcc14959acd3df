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
    /// Wall-clock budget of one build, from its start; past it the build stops and fails.
    pub build_timeout: std::time::Duration,
    /// Builds one owner may have waiting or running at once; more are refused (429).
    pub max_active_builds_per_owner: u64,
    /// Bytes of build-context files one owner may keep stored; uploads beyond are refused (429).
    pub max_context_bytes_per_owner: u64,
    /// How much the shared stores may hold (see [`nullspace_build::gc`]).
    pub retention: nullspace_build::gc::Retention,
    /// Time between two sweeps of the stores.
    pub gc_interval: std::time::Duration,
    /// The image the builtin `base` template is built from on first use.
    pub base_image: String,
}

impl Default for ServerSettings {
    /// 16 GiB contexts, 4 GiB uploads, one hour per build, 8 active builds and 16 GiB of
    /// stored context files per owner, the
    /// default retention swept every 10 minutes, `base` from Debian bookworm.
    fn default() -> ServerSettings {
        ServerSettings {
            limits: RequestLimits::default(),
            max_upload_bytes: 4 << 30,
            build_timeout: std::time::Duration::from_secs(3600),
            max_active_builds_per_owner: 8,
            max_context_bytes_per_owner: 16 << 30,
            retention: nullspace_build::gc::Retention::default(),
            gc_interval: std::time::Duration::from_secs(600),
            base_image: "debian:bookworm".into(),
        }
    }
}
