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

/// What this process does in a deployment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Role {
    /// The HTTP API only: records builds, serves logs; runs none.
    Api,
    /// Runs builds claimed from the shared queue; serves only health, readiness and metrics.
    Worker,
    /// Both (the one-machine default).
    #[default]
    All,
}

impl Role {
    /// Whether this process serves the API.
    pub fn serves_api(self) -> bool {
        matches!(self, Role::Api | Role::All)
    }

    /// Whether this process runs builds.
    pub fn runs_builds(self) -> bool {
        matches!(self, Role::Worker | Role::All)
    }

    /// `api`, `worker` or `all`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Api => "api",
            Role::Worker => "worker",
            Role::All => "all",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(text: &str) -> Result<Role, String> {
        match text {
            "api" => Ok(Role::Api),
            "worker" => Ok(Role::Worker),
            "all" => Ok(Role::All),
            other => Err(format!("unknown role {other:?}: use api, worker or all")),
        }
    }
}

/// How this process takes part in a deployment: its role, the shared store, the queue's
/// leases and shutdown.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deployment {
    /// What this process does.
    pub role: Role,
    /// `postgres://...` when many processes share state; `None` is the data dir's SQLite.
    pub database_url: Option<String>,
    /// How long a worker's claim on a build lasts without renewal (renewed every tenth of it).
    pub lease: std::time::Duration,
    /// On SIGTERM, how long running builds may take to finish before they are handed back.
    pub drain_timeout: std::time::Duration,
    /// This process's name in leases and sandbox records (unique among live processes).
    pub instance: String,
    /// Bytes of artifacts fetched from other hosts this host keeps (least recently used go).
    pub artifact_cache_bytes: u64,
    /// `s3://bucket[/prefix]` or `file:///dir`: where artifacts and context blobs are shared
    /// between hosts (`None`: this host's data dir only).
    pub object_store_url: Option<String>,
    /// The S3 endpoint (an S3-compatible service), when not AWS's.
    pub s3_endpoint: Option<String>,
}

impl Default for Deployment {
    /// One process doing everything on SQLite; 30 s leases; 60 s to drain.
    fn default() -> Deployment {
        Deployment {
            role: Role::All,
            database_url: None,
            lease: std::time::Duration::from_secs(30),
            drain_timeout: std::time::Duration::from_secs(60),
            instance: default_instance(),
            artifact_cache_bytes: 64 << 30,
            object_store_url: None,
            s3_endpoint: None,
        }
    }
}

/// `w-<random>`: unique among the live processes of a deployment, and opaque (tenants read it
/// in log entries; the server logs which host and process it is).
pub fn default_instance() -> String {
    format!("w-{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff)
}

/// This machine's host name (letters, digits, `-` and `.` only; at most 40 characters).
pub fn hostname() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    host.trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '.')
        .take(40)
        .collect()
}
