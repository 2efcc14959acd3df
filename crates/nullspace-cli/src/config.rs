//! The process environment, read once here: the libraries take their configuration as
//! values and never read the environment themselves.
//!
//! | variable | what |
//! |---|---|
//! | `NULLSPACE_DATA_DIR` | the data dir ([`DataDir::from_env`]) |
//! | `NULLSPACE_REGISTRY_MIRRORS`, `NULLSPACE_INSECURE_REGISTRIES`, `DOCKER_CONFIG` | the registry client ([`RegistryConfig::from_env`]) |
//! | `NULLSPACE_DOCKER`, `DOCKER_HOST`, `DOCKER_CONFIG`, `NULLSPACE_BUILDX_BUILDER`, `NULLSPACE_BUILDKIT_PROGRESS` | the `docker buildx` driver |
//! | `NULLSPACE_BUILDKIT_ALLOW_SSH`, `NULLSPACE_BUILDKIT_COMPRESSION` | BuildKit policy and export |
//! | `NULLSPACE_MAX_CONTEXT_BYTES`, `NULLSPACE_MAX_UPLOAD_BYTES` | the server's limits |
//! | `NULLSPACE_KERNEL`, `NULLSPACE_QEMU`, `NULLSPACE_VM_ACCEL` | the build VM ([`vm`]) |
//! | `NULLSPACE_REQUIRE_SNAPSHOTS=1` | every build boots a VM and publishes a snapshot |

use std::path::PathBuf;

use anyhow::Context;
use nullspace_build::build_vm::VmConfig;
use nullspace_build::buildkit::{Compression, DockerBuildxConfig, ProgressFormat};
use nullspace_build::dockerfile::BuildkitPolicy;
use nullspace_build::engine_dockerfile::BuildkitOptions;
use nullspace_build::{DataDir, Engine};
use nullspace_oci::{AddressPolicy, RegistryConfig};
use nullspace_server::config::ServerSettings;
use nullspace_vm::AccelChoice;

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// The Docker client config dir: `DOCKER_CONFIG`, else `~/.docker`.
fn docker_config_dir() -> Option<PathBuf> {
    var("DOCKER_CONFIG")
        .map(PathBuf::from)
        .or_else(|| dirs::home_dir().map(|h| h.join(".docker")))
}

/// The VM runtime: `NULLSPACE_KERNEL` (an unpacked kernel package; default `<data>/kernel`),
/// `NULLSPACE_QEMU` (default `qemu-system-x86_64` on `PATH`), `NULLSPACE_VM_ACCEL`
/// (`auto`, `kvm` or `tcg`).
pub fn vm() -> anyhow::Result<VmConfig> {
    let accel = AccelChoice::parse(&var("NULLSPACE_VM_ACCEL").unwrap_or_default())
        .map_err(|e| anyhow::anyhow!("NULLSPACE_VM_ACCEL: {e}"))?;
    Ok(VmConfig {
        kernel_dir: var("NULLSPACE_KERNEL").map(PathBuf::from),
        qemu: var("NULLSPACE_QEMU").map(PathBuf::from),
        accel: Some(accel),
    })
}

/// `NULLSPACE_REQUIRE_SNAPSHOTS=1`: every build boots a VM and publishes a snapshot.
pub fn require_snapshots() -> bool {
    var("NULLSPACE_REQUIRE_SNAPSHOTS").as_deref() == Some("1")
}

/// Sandbox limits (`NULLSPACE_SANDBOX_MAX_PER_OWNER`, `NULLSPACE_SANDBOX_MAX_MEMORY_MB`,
/// `NULLSPACE_SANDBOX_DEFAULT_TIMEOUT_SECS`, `NULLSPACE_SANDBOX_MAX_TIMEOUT_SECS`).
pub fn sandbox_settings() -> anyhow::Result<nullspace_server::sandboxes::SandboxSettings> {
    let mut settings = nullspace_server::sandboxes::SandboxSettings::default();
    let number = |name: &str| -> anyhow::Result<Option<u64>> {
        var(name)
            .map(|v| {
                let parsed: u64 = v
                    .parse()
                    .with_context(|| format!("{name}={v:?}: expected a whole number"))?;
                anyhow::ensure!(parsed > 0, "{name}: must be more than 0");
                Ok(parsed)
            })
            .transpose()
    };
    let limits = &mut settings.limits;
    if let Some(count) = number("NULLSPACE_SANDBOX_MAX_PER_OWNER")? {
        limits.max_per_owner = u32::try_from(count).unwrap_or(u32::MAX);
    }
    if let Some(mb) = number("NULLSPACE_SANDBOX_MAX_MEMORY_MB")? {
        limits.max_memory_mb_per_owner = mb;
    }
    if let Some(seconds) = number("NULLSPACE_SANDBOX_DEFAULT_TIMEOUT_SECS")? {
        limits.default_timeout = std::time::Duration::from_secs(seconds);
    }
    if let Some(seconds) = number("NULLSPACE_SANDBOX_MAX_TIMEOUT_SECS")? {
        limits.max_timeout = std::time::Duration::from_secs(seconds);
    }
    // Set by the CLI's own local sandbox server (`local_server.rs`), never on a shared one.
    settings.local_templates = var("NULLSPACE_LOCAL_TEMPLATES").as_deref() == Some("1");
    let limits = &settings.limits;
    anyhow::ensure!(
        limits.default_timeout <= limits.max_timeout,
        "NULLSPACE_SANDBOX_DEFAULT_TIMEOUT_SECS is over NULLSPACE_SANDBOX_MAX_TIMEOUT_SECS"
    );
    Ok(settings)
}

/// The `docker buildx` driver's configuration.
pub fn buildx() -> DockerBuildxConfig {
    DockerBuildxConfig {
        docker: var("NULLSPACE_DOCKER").map_or_else(|| PathBuf::from("docker"), PathBuf::from),
        docker_host: var("DOCKER_HOST"),
        docker_config: docker_config_dir(),
        builder: var("NULLSPACE_BUILDX_BUILDER"),
        progress: match var("NULLSPACE_BUILDKIT_PROGRESS").as_deref() {
            Some("plain") => ProgressFormat::Plain,
            _ => ProgressFormat::RawJson,
        },
    }
}

/// BuildKit's policy and export options.
pub fn buildkit() -> BuildkitOptions {
    BuildkitOptions {
        policy: BuildkitPolicy {
            allow_ssh: matches!(
                var("NULLSPACE_BUILDKIT_ALLOW_SSH").as_deref(),
                Some("1" | "true")
            ),
            ..BuildkitPolicy::local()
        },
        compression: if var("NULLSPACE_BUILDKIT_COMPRESSION").as_deref() == Some("zstd") {
            Compression::Zstd
        } else {
            Compression::Gzip
        },
        client_config_dir: docker_config_dir(),
        ambient_credentials: true,
    }
}

/// The registry client of the build server: like the CLI's, but without the operator's
/// Docker credentials (`config.json`, credential helpers), which tenants must never borrow.
///
/// Tenants name registry hosts, token realms, redirects, GCP `token_uri`s and ECR endpoints, so
/// the server reaches public addresses only, plus the hosts the operator lists in
/// `NULLSPACE_SERVER_ALLOWED_HOSTS` (`host` or `host:port`, comma-separated); plain http only to
/// `NULLSPACE_INSECURE_REGISTRIES`.
pub fn server_registry() -> RegistryConfig {
    let operator = RegistryConfig::from_env();
    // The operator's own mirrors are reachable wherever they are.
    let mut allowed = server_allowed_hosts();
    for mirror in operator.mirrors.values().flatten() {
        if let Ok(url) = reqwest::Url::parse(mirror) {
            allowed.push(nullspace_oci::registry_config::url_host_port(&url));
        }
    }
    RegistryConfig {
        docker_config: None,
        addresses: AddressPolicy::public_only(allowed),
        ..operator
    }
}

/// `NULLSPACE_SERVER_ALLOWED_HOSTS`, split.
fn server_allowed_hosts() -> Vec<String> {
    var(nullspace_oci::address_policy::ALLOWLIST_VARIABLE)
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// BuildKit options of the build server: no ambient Docker credentials for any build.
///
/// Tenants get no cache mounts, and the host network only when the operator sets
/// `NULLSPACE_BUILD_HOST_NETWORK=allow` (builds with `internet_access` are refused otherwise).
pub fn server_buildkit() -> BuildkitOptions {
    let local = buildkit();
    BuildkitOptions {
        ambient_credentials: false,
        policy: BuildkitPolicy {
            allow_host_network: var("NULLSPACE_BUILD_HOST_NETWORK").as_deref() == Some("allow"),
            allow_cache_mounts: false,
            from_addresses: server_registry().addresses,
            ..local.policy.clone()
        },
        ..local
    }
}

/// The engine on `data`, configured from the environment.
pub fn engine(data: DataDir) -> anyhow::Result<Engine> {
    Ok(Engine::open(data, RegistryConfig::from_env())?
        .with_buildkit(buildx(), buildkit())
        .with_vm(vm()?)
        .require_snapshots(require_snapshots()))
}

/// The server's limits: `NULLSPACE_MAX_CONTEXT_BYTES` (default 16 GiB),
/// `NULLSPACE_MAX_UPLOAD_BYTES` (default 4 GiB), `NULLSPACE_BUILD_TIMEOUT_SECS` (default 3600)
/// `NULLSPACE_MAX_ACTIVE_BUILDS_PER_OWNER` (default 8) and
/// `NULLSPACE_MAX_CONTEXT_BYTES_PER_OWNER` (default 16 GiB); garbage collection:
/// `NULLSPACE_GC_MAX_LAYER_BYTES`, `NULLSPACE_GC_MAX_ROOTFS_CACHE_BYTES`,
/// `NULLSPACE_GC_MAX_CONTEXT_BYTES`, `NULLSPACE_GC_MIN_AGE_SECS`, `NULLSPACE_GC_MAX_UNUSED_SECS`
/// and `NULLSPACE_GC_INTERVAL_SECS` (see `nullspace_build::gc::Retention`). Each must be a
/// positive number.
pub fn server_settings() -> anyhow::Result<ServerSettings> {
    let mut settings = ServerSettings::default();
    let bytes = |name: &str| -> anyhow::Result<Option<u64>> {
        match var(name) {
            Some(v) => {
                let parsed: u64 = v
                    .parse()
                    .with_context(|| format!("{name}={v:?}: expected a whole number"))?;
                anyhow::ensure!(parsed > 0, "{name}: must be more than 0");
                Ok(Some(parsed))
            }
            None => Ok(None),
        }
    };
    if let Some(limit) = bytes("NULLSPACE_MAX_CONTEXT_BYTES")? {
        settings.limits.max_context_bytes = limit;
    }
    // The builtin `base` template's image (sandboxes and `from_template("base")`).
    if let Some(image) = var("NULLSPACE_BASE_IMAGE") {
        settings.base_image = image;
    }
    if let Some(limit) = bytes("NULLSPACE_MAX_UPLOAD_BYTES")? {
        settings.max_upload_bytes = limit;
    }
    if let Some(seconds) = bytes("NULLSPACE_BUILD_TIMEOUT_SECS")? {
        settings.build_timeout = std::time::Duration::from_secs(seconds);
    }
    if let Some(count) = bytes("NULLSPACE_MAX_ACTIVE_BUILDS_PER_OWNER")? {
        settings.max_active_builds_per_owner = count;
    }
    if let Some(limit) = bytes("NULLSPACE_MAX_CONTEXT_BYTES_PER_OWNER")? {
        settings.max_context_bytes_per_owner = limit;
    }
    let retention = &mut settings.retention;
    if let Some(limit) = bytes("NULLSPACE_GC_MAX_LAYER_BYTES")? {
        retention.max_layer_bytes = limit;
    }
    if let Some(limit) = bytes("NULLSPACE_GC_MAX_ROOTFS_CACHE_BYTES")? {
        retention.max_rootfs_cache_bytes = limit;
    }
    if let Some(limit) = bytes("NULLSPACE_GC_MAX_CONTEXT_BYTES")? {
        retention.max_context_bytes = limit;
    }
    if let Some(seconds) = bytes("NULLSPACE_GC_MIN_AGE_SECS")? {
        retention.min_age = std::time::Duration::from_secs(seconds);
    }
    if let Some(seconds) = bytes("NULLSPACE_GC_MAX_UNUSED_SECS")? {
        retention.max_unused = std::time::Duration::from_secs(seconds);
    }
    if let Some(seconds) = bytes("NULLSPACE_GC_INTERVAL_SECS")? {
        settings.gc_interval = std::time::Duration::from_secs(seconds);
    }
    Ok(settings)
}
