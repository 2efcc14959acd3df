//! The Nullspace template build service: the HTTP API (spec §3) over a durable [`BuildStore`].
//!
//! `POST /v1/templates/builds` records a `waiting` build and queues it; a bounded pool of
//! workers ([`runner::Runner`]) runs it with the engine (`building`), and it ends `ready`,
//! `error` or `cancelled`. Log entries are durable and addressed by offset, replayable by
//! polling (`GET /v1/templates/builds/{id}?offset=`) or as SSE (`.../logs`). Builds and
//! templates belong to the API key's owner; other callers get not found.
//!
//! Base-image credentials are used for the request only: held in memory until the build
//! starts, never stored, logged or returned (the build records their kind).
#![deny(missing_docs)]

pub mod api;
pub mod auth;
pub mod config;
pub mod entry;
pub mod error;
pub mod refs;
pub mod runner;
pub mod sandboxes;
pub mod store;
pub mod view;

use std::net::SocketAddr;
use std::sync::Arc;

use nullspace_build::buildkit::DockerBuildxConfig;
use nullspace_build::engine_dockerfile::BuildkitOptions;
use nullspace_build::{DataDir, Engine};
use nullspace_oci::RegistryConfig;

pub use auth::ApiKeys;
pub use store::{BuildStore, PgStore, SqliteStore};

/// What `nullspace serve` needs.
#[derive(Debug)]
pub struct ServerConfig {
    /// Address to listen on (port 0 picks a free port).
    pub listen: SocketAddr,
    /// The data dir.
    pub data: DataDir,
    /// Builds run at once.
    pub workers: usize,
    /// API keys; empty only together with `open_owner`.
    pub keys: ApiKeys,
    /// With auth disabled, the owner every caller acts as.
    pub open_owner: Option<String>,
    /// Limits and policies.
    pub settings: config::ServerSettings,
    /// Registry mirrors, insecure hosts and the Docker config the engine uses.
    pub registry: RegistryConfig,
    /// The `docker buildx` that Dockerfile and declarative builds run on.
    pub buildx: DockerBuildxConfig,
    /// BuildKit policy (what Dockerfiles may do) and export options.
    pub buildkit: BuildkitOptions,
    /// Where the build VM's QEMU and guest kernel come from.
    pub vm: nullspace_build::build_vm::VmConfig,
    /// Every build boots a VM and publishes a snapshot.
    pub require_snapshots: bool,
    /// Sandbox limits and the builtin base template's image.
    pub sandboxes: sandboxes::SandboxSettings,
    /// Role, shared store, leases, drain.
    pub deployment: config::Deployment,
}

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The engine could not open the data dir.
    #[error(transparent)]
    Engine(Box<nullspace_build::BuildError>),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// The registry client could not be configured.
    #[error(transparent)]
    Registry(#[from] nullspace_oci::Error),
    /// Object storage could not be opened.
    #[error(transparent)]
    ObjectStorage(#[from] nullspace_build::object_storage::StorageError),
    /// A role other than `all` without a shared store.
    #[error(
        "--role {0} needs a shared store: pass --database postgres://... (SQLite is one process's)"
    )]
    RoleNeedsSharedStore(&'static str),
    /// No API keys and auth not disabled.
    #[error(
        "no API keys: set {} (key:owner,...) or {}, or disable auth explicitly",
        auth::API_KEYS_ENV,
        auth::API_KEYS_FILE_ENV
    )]
    NoKeys,
    /// Listening or serving failed.
    #[error("{address}: {source}")]
    Io {
        /// The address.
        address: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Opens the engine and the store, recovers builds interrupted by a crash, and returns the
/// router's state.
pub fn open(config: &ServerConfig) -> Result<api::AppState, ServerError> {
    let role = config.deployment.role;
    if role.serves_api() && config.keys.is_empty() && config.open_owner.is_none() {
        return Err(ServerError::NoKeys);
    }
    if role != config::Role::All && config.deployment.database_url.is_none() {
        return Err(ServerError::RoleNeedsSharedStore(role.as_str()));
    }
    let objects = match &config.deployment.object_store_url {
        Some(url) => Some(nullspace_build::object_storage::ObjectStorage::open(
            url,
            config.deployment.s3_endpoint.as_deref(),
        )?),
        None => None,
    };
    let mut engine = Engine::open(config.data.clone(), config.registry.clone())
        .map_err(|e| ServerError::Engine(Box::new(e)))?
        .with_buildkit(config.buildx.clone(), config.buildkit.clone())
        .with_vm(config.vm.clone())
        .require_snapshots(config.require_snapshots);
    if let Some(objects) = &objects {
        engine = engine.with_layer_storage(objects.clone());
    }
    let engine = Arc::new(engine);
    let store: Arc<dyn BuildStore> = match &config.deployment.database_url {
        Some(url) => Arc::new(PgStore::connect(url)?),
        None => Arc::new(SqliteStore::open(&config.data.database())?),
    };
    if store.is_shared() && objects.is_none() {
        tracing::warn!("a shared store without object storage: templates built here are usable only on this host (pass --object-store)");
    }
    let runner = runner::Runner::new(
        store,
        engine,
        config.workers,
        &config.settings,
        config.deployment.clone(),
        objects,
    );
    runner.recover()?;
    runner.start();
    let sandboxes = Arc::new(sandboxes::SandboxService::open(
        runner.clone(),
        config.sandboxes.clone(),
    )?);
    Ok(api::AppState {
        sandboxes,
        runner,
        keys: Arc::new(config.keys.clone()),
        open_owner: config.open_owner.clone(),
        config: Arc::new(config.settings.clone()),
    })
}

/// Serves until `shutdown` resolves; `on_listening` gets the bound address.
pub async fn serve(
    config: ServerConfig,
    on_listening: impl FnOnce(SocketAddr),
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let state = open(&config)?;
    let io = |source| ServerError::Io {
        address: config.listen.to_string(),
        source,
    };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(io)?;
    on_listening(listener.local_addr().map_err(io)?);
    let collector = tokio::spawn(collect_garbage(
        state.runner.engine().clone(),
        config.settings.retention.clone(),
        config.settings.gc_interval,
    ));
    let sandboxes = state.sandboxes.clone();
    let runner = state.runner.clone();
    tracing::info!(
        "role {} as instance {} (host {}, pid {}) on the {} store",
        config.deployment.role.as_str(),
        config.deployment.instance,
        config::hostname(),
        std::process::id(),
        if config.deployment.database_url.is_some() {
            "PostgreSQL"
        } else {
            "SQLite"
        }
    );
    let router = if config.deployment.role.serves_api() {
        api::router(state)
    } else {
        api::ops_router(state)
    };
    // On shutdown: stop claiming, let running builds finish (or hand them back), then stop
    // serving, so followers see the builds' last entries.
    let drained = {
        let runner = runner.clone();
        async move {
            shutdown.await;
            tracing::info!("shutting down: draining builds");
            runner.drain().await;
        }
    };
    let served = axum::serve(listener, router)
        .with_graceful_shutdown(drained)
        .await
        .map_err(io);
    collector.abort();
    // Sandboxes end with the server, and are recorded as such.
    sandboxes.shutdown().await;
    served
}

/// Sweeps the data dir's shared stores at start and every `interval` (see
/// [`nullspace_build::gc`]).
async fn collect_garbage(
    engine: std::sync::Arc<nullspace_build::Engine>,
    retention: nullspace_build::gc::Retention,
    interval: std::time::Duration,
) {
    loop {
        let engine = engine.clone();
        let retention = retention.clone();
        let swept = tokio::task::spawn_blocking(move || {
            nullspace_build::gc::sweep(engine.data_dir(), engine.store(), &retention)
                .map_err(|error| error.to_string())
        })
        .await;
        match swept {
            Ok(Ok(report)) if report.files_removed > 0 => tracing::info!(
                "gc: removed {} file(s), {} bytes freed",
                report.files_removed,
                report.bytes_freed
            ),
            Ok(Ok(_)) => {}
            Ok(Err(error)) => tracing::warn!("gc: {error}"),
            Err(error) => tracing::warn!("gc stopped: {error}"),
        }
        tokio::time::sleep(interval).await;
    }
}
