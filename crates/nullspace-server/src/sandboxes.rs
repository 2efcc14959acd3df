//! Sandboxes on this server: the [`nullspace_sandbox::Sandboxes`] of this host (started on
//! first use, when the VM runtime is known to work), template refs resolved to what a sandbox
//! starts from, the builtin `base` template, and the durable record of every sandbox.

use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use axum::http::StatusCode;
use nullspace_api::sandbox::SandboxInfo;
use nullspace_api::BuildStatus;
use nullspace_build::artifact::read_document;
use nullspace_build::build_vm::{probe, start_spec, DEFAULT_CPU_COUNT, DEFAULT_MEMORY_MB};
use nullspace_build::store::LOCAL_NAMESPACE;
use nullspace_sandbox::{
    Ledger, Limits, Sandbox, SandboxError, SandboxState, Sandboxes, TemplateImage,
};
use nullspace_vm::MachineSize;

use crate::error::ApiError;
use crate::refs::resolve_ref;
use crate::runner::Runner;
use crate::store::{BuildRecord, BuildStore};

pub use crate::runner::BASE;

/// What the operator sets for sandboxes (the builtin `base` template's image is
/// [`crate::config::ServerSettings::base_image`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SandboxSettings {
    /// Limits and timeouts.
    pub limits: Limits,
    /// Owner `local` also starts the templates the CLI built on this data dir (the CLI's own
    /// background server for local mode; never on a shared server).
    pub local_templates: bool,
}

fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_seconds(at).to_string()
}

/// The API's view of a live (or just ended) sandbox.
pub fn info(sandbox: &Sandbox) -> SandboxInfo {
    let (state, ended_at, end_reason, end_detail) = match sandbox.state() {
        SandboxState::Running => ("running", None, None, None),
        SandboxState::Ended { reason, detail, at } => (
            "ended",
            Some(rfc3339(at)),
            Some(reason.as_str().to_string()),
            Some(detail),
        ),
    };
    SandboxInfo {
        sandbox_id: sandbox.id.clone(),
        template: sandbox.template.clone(),
        build_id: sandbox.build_id.clone(),
        state: state.into(),
        started_from: sandbox.start_kind.as_str().into(),
        start_ms: sandbox.start_time.as_millis() as u64,
        created_at: rfc3339(sandbox.created_at),
        end_at: (state == "running").then(|| rfc3339(sandbox.deadline())),
        ended_at,
        end_reason,
        end_detail,
        cpu_count: sandbox.size.cpu_count,
        memory_mb: sandbox.size.memory_mb,
        env_keys: sandbox.env_names(),
    }
}

/// A template build a sandbox can start from.
#[derive(Clone, Debug)]
pub struct ResolvedTemplate {
    /// The build (`tb_...`).
    pub build_id: String,
    /// Its artifact.
    pub artifact_dir: std::path::PathBuf,
}

impl ResolvedTemplate {
    fn of(engine: &nullspace_build::Engine, build: &BuildRecord) -> ResolvedTemplate {
        ResolvedTemplate {
            build_id: build.id.clone(),
            artifact_dir: engine.data_dir().templates().join(&build.id),
        }
    }
}

/// Records ends in the store.
struct StoreLedger {
    store: Arc<dyn BuildStore>,
    /// The host that runs the sandboxes (see [`SandboxService::host_name`]).
    host: String,
}

impl Ledger for StoreLedger {
    fn ended(&self, sandbox: &Sandbox, state: &SandboxState) {
        let mut record = info(sandbox);
        if let SandboxState::Ended { reason, detail, at } = state {
            record.state = "ended".into();
            record.end_at = None;
            record.ended_at = Some(rfc3339(*at));
            record.end_reason = Some(reason.as_str().into());
            record.end_detail = Some(detail.clone());
        }
        if let Err(e) = self.store.put_sandbox(&record, &sandbox.owner, &self.host) {
            tracing::error!("recording the end of sandbox {}: {e}", sandbox.id);
        }
    }
}

/// The server's sandboxes.
pub struct SandboxService {
    runner: Arc<Runner>,
    settings: SandboxSettings,
    host: OnceLock<Result<Arc<Sandboxes>, String>>,
}

/// A sandbox error as the API reports it.
pub fn api_error(error: SandboxError) -> ApiError {
    let (status, code) = match &error {
        SandboxError::NotFound(_) => (StatusCode::NOT_FOUND, "sandbox_not_found"),
        SandboxError::CommandNotFound(_) => (StatusCode::NOT_FOUND, "command_not_found"),
        SandboxError::NotRunning { .. } => (StatusCode::CONFLICT, "sandbox_not_running"),
        SandboxError::Quota(_) => (StatusCode::TOO_MANY_REQUESTS, "sandbox_quota_exceeded"),
        SandboxError::Invalid { .. } => (StatusCode::BAD_REQUEST, "invalid_request"),
        SandboxError::Unstartable(_) => (StatusCode::UNPROCESSABLE_ENTITY, "sandbox_start_failed"),
        SandboxError::Vm(nullspace_vm::VmError::RebuildRequired(_)) => {
            (StatusCode::CONFLICT, "rebuild_required")
        }
        SandboxError::Vm(_) => (StatusCode::INTERNAL_SERVER_ERROR, "vm_failed"),
        SandboxError::File { kind, .. } => match kind.as_str() {
            "not_found" => (StatusCode::NOT_FOUND, "file_not_found"),
            "permission_denied" => (StatusCode::FORBIDDEN, "file_permission_denied"),
            "too_large" => (StatusCode::PAYLOAD_TOO_LARGE, "file_too_large"),
            "invalid" => (StatusCode::BAD_REQUEST, "invalid_request"),
            _ => (StatusCode::BAD_REQUEST, "file_error"),
        },
        SandboxError::Agent(_) => (StatusCode::BAD_GATEWAY, "sandbox_agent_failed"),
        SandboxError::Io { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "internal_error"),
    };
    ApiError::new(status, code, error.to_string())
}

/// The name sandbox records give the host that runs them: the machine and the data dir (one
/// sandbox host per data dir, which a lock enforces), stable across restarts so a restarted
/// host ends its own earlier sandboxes and no one else's.
pub fn host_name(data: &nullspace_build::DataDir) -> String {
    format!("{}:{}", crate::config::hostname(), data.root().display())
}

impl SandboxService {
    /// The name of this host in sandbox records.
    pub fn host_name(&self) -> String {
        host_name(self.runner.engine().data_dir())
    }

    /// Sandboxes over `runner`'s engine and store. Sandboxes recorded as running by an earlier
    /// process are recorded as ended now: their VMs ended with it.
    pub fn open(
        runner: Arc<Runner>,
        settings: SandboxSettings,
    ) -> Result<SandboxService, crate::store::StoreError> {
        let ended = runner.store().end_running_sandboxes(
            &host_name(runner.engine().data_dir()),
            &rfc3339(SystemTime::now()),
            "server_restarted",
            "the server stopped while it ran; its VM ended with it",
        )?;
        if ended > 0 {
            tracing::info!("{ended} sandbox(es) of an earlier run recorded as ended");
        }
        Ok(SandboxService {
            runner,
            settings,
            host: OnceLock::new(),
        })
    }

    /// This host's sandboxes, started on first use.
    pub fn host(&self) -> Result<Arc<Sandboxes>, ApiError> {
        let host = self.host.get_or_init(|| {
            let engine = self.runner.engine();
            let runtime = engine.vm_runtime().map_err(|e| e.to_string())?;
            let dir = engine.data_dir().root().join("sandboxes");
            let ledger = Arc::new(StoreLedger {
                host: self.host_name(),
                store: self.runner.store().clone(),
            });
            Sandboxes::new(
                runtime.qemu().clone(),
                dir,
                self.settings.limits.clone(),
                ledger,
            )
            .map(Arc::new)
            .map_err(|e| e.to_string())
        });
        host.clone().map_err(|reason| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "vm_unavailable",
                format!("sandboxes need a VM runtime on this server: {reason}"),
            )
        })
    }

    /// Ends every running sandbox (the server is stopping).
    pub async fn shutdown(&self) {
        if let Some(Ok(host)) = self.host.get() {
            host.shutdown().await;
        }
    }

    /// A running sandbox of `owner`.
    pub fn live(&self, owner: &str, id: &str) -> Result<Arc<Sandbox>, ApiError> {
        self.host()?
            .get(owner, id)
            .ok_or_else(|| api_error(SandboxError::NotFound(id.to_string())))
    }

    /// The ready build `reference` names for `owner`: the owner's own templates first (with
    /// local templates, those the CLI built on this data dir for owner `local`); `base` falls
    /// back to the builtin one, built on first use.
    pub async fn resolve(
        &self,
        owner: &str,
        reference: &str,
    ) -> Result<ResolvedTemplate, ApiError> {
        let store = self.runner.store().clone();
        let engine = self.runner.engine().clone();
        let local = self.settings.local_templates && owner == LOCAL_NAMESPACE;
        let (owner_text, wanted) = (owner.to_string(), reference.to_string());
        let own = tokio::task::spawn_blocking(move || {
            let api = if wanted.starts_with("tb_") {
                store
                    .build(Some(&owner_text), &wanted)?
                    .filter(|b| b.status == BuildStatus::Ready)
                    .ok_or_else(|| ApiError::template_not_found(&wanted))
            } else {
                resolve_ref(store.as_ref(), &owner_text, &wanted).map(|r| r.build)
            };
            match api {
                Ok(build) => Ok(Err(Box::new(build))),
                Err(e) if local => engine
                    .store()
                    .resolve(&wanted)
                    .map(|found| {
                        Ok(ResolvedTemplate {
                            build_id: found.build_id,
                            artifact_dir: found.artifact_dir,
                        })
                    })
                    .map_err(|_| e),
                Err(e) => Err(e),
            }
        })
        .await
        .map_err(ApiError::internal)?;
        let build = match own {
            Ok(Ok(local)) => return Ok(local),
            Ok(Err(build)) => *build,
            Err(e) if reference == BASE && e.status == StatusCode::NOT_FOUND => {
                self.runner.builtin_base().await?
            }
            Err(e) => return Err(e),
        };
        // Built on another host: fetched from object storage first.
        self.runner.local_artifact(&build).await?;
        Ok(ResolvedTemplate::of(self.runner.engine(), &build))
    }

    /// What a sandbox of `template` starts from.
    pub fn image(
        &self,
        template: &ResolvedTemplate,
        reference: &str,
    ) -> Result<TemplateImage, ApiError> {
        let engine = self.runner.engine();
        let dir = template.artifact_dir.clone();
        let build = template;
        let document = read_document(&dir).map_err(|e| {
            ApiError::new(
                StatusCode::CONFLICT,
                "template_artifact_missing",
                format!("template build {}: {e}", build.build_id),
            )
        })?;
        let snapshot = document
            .snapshot
            .as_ref()
            .map(|record| dir.join(&record.path));
        let size = match &document.snapshot {
            Some(record) => record.machine.size,
            None => MachineSize {
                cpu_count: document.build_config.cpu_count.unwrap_or(DEFAULT_CPU_COUNT),
                memory_mb: document.build_config.memory_mb.unwrap_or(DEFAULT_MEMORY_MB),
            },
        };
        let readiness = document
            .runtime_defaults
            .readiness
            .as_ref()
            .map(probe)
            .transpose()
            .map_err(|e| ApiError::internal(e.to_string()))?;
        let boot_files = engine.vm_runtime().ok().map(|r| r.boot_files());
        Ok(TemplateImage {
            reference: reference.to_string(),
            build_id: build.build_id.clone(),
            rootfs: dir.join(nullspace_build::artifact::ROOTFS_FILE),
            snapshot,
            size,
            defaults: start_spec(&document.name, &document.runtime_defaults, readiness, None),
            boot_files,
        })
    }
}
