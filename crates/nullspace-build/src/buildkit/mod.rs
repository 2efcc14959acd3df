//! The BuildKit backend: a [`BuildkitDriver`] runs one Dockerfile build and writes an OCI
//! archive; the engine then imports that archive like any registry image.
//!
//! The driver sees only a [`BuildkitJob`] (files on disk, build args, network mode, output
//! path), never the request or the database, so another driver (e.g. `buildctl` against a
//! standalone `buildkitd`) can be added beside [`DockerBuildx`] without touching the rest.

mod docker;
mod progress;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use serde::Serialize;

use crate::events::EventSink;

pub use docker::{DockerBuildx, DockerBuildxConfig};
pub use progress::{ProgressFormat, Redactor};

/// What a driver found out about its BuildKit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BuildkitInfo {
    /// Driver name (`docker-buildx`).
    pub driver: &'static str,
    /// The client binary used, if any.
    pub binary: Option<PathBuf>,
    /// Where the daemon listens (`unix:///run/docker.sock`).
    pub endpoint: String,
    /// Docker Engine version, when the driver goes through one.
    pub engine_version: Option<String>,
    /// The builder instance (`default`).
    pub builder: String,
    /// BuildKit's version as reported by the builder (`v0.13.2`, `v0.0.0+unknown` for distro
    /// builds).
    pub buildkit_version: String,
    /// The client plugin's version (`buildx 0.13.1`).
    pub client_version: Option<String>,
    /// Whether the built-in Dockerfile frontend accepts heredocs (probed with a tiny build).
    pub heredocs: bool,
}

/// The build's network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Network {
    /// No network for `RUN` steps (`internet_access = false`).
    None,
    /// The host's network (`internet_access = true`; the daemon has no bridge).
    Host,
}

impl Network {
    /// The `--network` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Network::None => "none",
            Network::Host => "host",
        }
    }
}

/// Layer compression of the exported image.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    /// gzip (BuildKit's default).
    #[default]
    Gzip,
    /// zstd, forced for every layer (faster to import).
    Zstd,
}

/// What the server allows Dockerfiles to do. Default: no SSH forwarding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuildkitPolicy {
    /// Whether `RUN --mount=type=ssh` may be used (the client's agent is forwarded).
    pub allow_ssh: bool,
    /// The `--ssh` value passed when allowed (`default` = `$SSH_AUTH_SOCK`).
    pub ssh_forward: String,
    /// Whether `RUN` steps may use the host's network when `internet_access` is true. The
    /// daemon here has no bridge, so that network reaches the host's loopback services, the
    /// Docker daemon and the API: true for the local CLI, whose user owns the host; false (the
    /// default) for a shared server unless its operator opts in, and such builds are refused.
    pub allow_host_network: bool,
    /// Whether `RUN --mount=type=cache` may be used. BuildKit keeps one cache per mount id for
    /// every build it runs, so on a shared server one tenant would read and poison another's:
    /// true for the local CLI, false (the default) for a server, where they are refused.
    pub allow_cache_mounts: bool,
    /// Which registry hosts `FROM` may name: BuildKit pulls them on the tenant's behalf, so on
    /// a server they pass the same address policy as the server's own registry client.
    pub from_addresses: nullspace_oci::AddressPolicy,
}

impl Default for BuildkitPolicy {
    /// What a server shared by tenants allows.
    fn default() -> Self {
        BuildkitPolicy {
            allow_ssh: false,
            ssh_forward: "default".into(),
            allow_host_network: false,
            allow_cache_mounts: false,
            from_addresses: nullspace_oci::AddressPolicy::public_only(Vec::new()),
        }
    }
}

impl BuildkitPolicy {
    /// What a user's own machine allows: everything but SSH forwarding (opted into).
    pub fn local() -> Self {
        BuildkitPolicy {
            allow_host_network: true,
            allow_cache_mounts: true,
            from_addresses: nullspace_oci::AddressPolicy::default(),
            ..BuildkitPolicy::default()
        }
    }
}

/// Why a build with `internet_access` is refused where the host network is not allowed.
pub const HOST_NETWORK_REFUSED: &str = "this server cannot give build steps a network isolated from the host (its BuildKit has only the host network, which reaches the host's own services), so builds with internet access are refused: set internet_access to false, or ask the operator to allow it (NULLSPACE_BUILD_HOST_NETWORK=allow)";

/// How this server runs BuildKit builds (set by the binary; see `Engine::with_buildkit`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BuildkitOptions {
    /// What Dockerfiles may do.
    pub policy: BuildkitPolicy,
    /// Layer compression of BuildKit's export.
    pub compression: Compression,
    /// The Docker client config dir whose `cli-plugins/` and `buildx/` a build's private
    /// Docker config links (so buildx and its builders still work); `None` links nothing.
    pub client_config_dir: Option<PathBuf>,
    /// Whether builds that bring no credentials may use the client config's own (`auths`,
    /// credential helpers): true for the local CLI, whose user owns them; false (the default)
    /// for a server shared by tenants, who must never borrow the operator's.
    pub ambient_credentials: bool,
}

/// One build for a driver to run: every input is a file or dir on this machine.
#[derive(Clone, Debug)]
pub struct BuildkitJob {
    /// The Dockerfile.
    pub dockerfile: PathBuf,
    /// The build context (BuildKit applies its `.dockerignore`).
    pub context: PathBuf,
    /// Named contexts (`--build-context NAME=DIR`).
    pub named_contexts: BTreeMap<String, PathBuf>,
    /// Image contexts: name → `oci-layout://DIR@DIGEST`.
    pub image_contexts: BTreeMap<String, String>,
    /// Secret id → file holding the value (0600, in the staging dir).
    pub secrets: BTreeMap<String, PathBuf>,
    /// Build args (values passed through the child's environment, not its argv).
    pub build_args: BTreeMap<String, String>,
    /// Network for `RUN` steps.
    pub network: Network,
    /// `--ssh` value, only when the policy allows SSH forwarding.
    pub ssh: Option<String>,
    /// Where the OCI archive goes.
    pub output: PathBuf,
    /// Layer compression.
    pub compression: Compression,
    /// A private Docker config dir (registry credentials for this build), if any.
    pub docker_config: Option<PathBuf>,
    /// Ignore BuildKit's cache.
    pub no_cache: bool,
    /// Scrubs secret values out of logs and errors.
    pub redactor: Redactor,
}

/// Why BuildKit could not build.
#[derive(Debug, thiserror::Error)]
pub enum BuildkitError {
    /// The client binary could not be started.
    #[error("buildkit: cannot run {binary}: {source}")]
    Spawn {
        /// The binary.
        binary: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The daemon does not answer.
    #[error("buildkit: the Docker daemon at {endpoint} is unreachable: {detail} (start it, or set DOCKER_HOST / NULLSPACE_DOCKER)")]
    Unreachable {
        /// Where we looked.
        endpoint: String,
        /// What the client said.
        detail: String,
    },
    /// The client lacks something we need (e.g. the buildx plugin).
    #[error("buildkit: {what}: {detail}")]
    Unsupported {
        /// What is missing.
        what: String,
        /// What the client said.
        detail: String,
    },
    /// A Dockerfile step failed.
    #[error("buildkit: step {step} failed: {message}")]
    StepFailed {
        /// The step, as BuildKit names it (`[2/3] RUN make`).
        step: String,
        /// BuildKit's error (secrets redacted).
        message: String,
    },
    /// The build failed outside a step (parse error, pull failure, export failure).
    #[error("buildkit: build failed: {message}")]
    Failed {
        /// BuildKit's error (secrets redacted).
        message: String,
    },
    /// A local file operation failed.
    #[error("buildkit: {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// A way to run BuildKit builds.
pub trait BuildkitDriver: Send + Sync {
    /// Short name (`docker-buildx`).
    fn name(&self) -> &'static str;

    /// Finds the daemon, builder, versions and frontend features; probes once and caches.
    fn detect(&self) -> BoxFuture<'_, Result<BuildkitInfo, BuildkitError>>;

    /// Runs `job`, reporting progress to `events`. Dropping the future kills the build.
    fn build<'a>(
        &'a self,
        job: &'a BuildkitJob,
        events: Arc<dyn EventSink>,
    ) -> BoxFuture<'a, Result<(), BuildkitError>>;
}
