//! Dockerfile (and declarative) builds: validate → BuildKit → OCI archive → the same import
//! road as a registry image → publish.
//!
//! Everything BuildKit needs lives in `<staging>/buildkit/` (mode 0700): the Dockerfile as
//! BuildKit reads it (any `# syntax=` line dropped, so no frontend image is pulled), an empty
//! context for inline Dockerfiles, one 0600 file per build secret, a private Docker config
//! holding only this build's registry credentials, and the exported `image.tar`. The secrets
//! and the Docker config are deleted as soon as BuildKit exits, the rest once the archive's
//! blobs are in the store, and all of it with the staging dir whatever happens (a dropped
//! future kills the client, which cancels the BuildKit solve).
//!
//! Build envs travel as `--build-arg` values through the client's environment (not its argv):
//! they are absent from the image's `Env`, but BuildKit records the args a `RUN` saw in that
//! layer's history entry (`RUN |1 KEY=value ...`), which sits in the image config blob in the
//! blob store. Secrets must therefore go in `build_secrets`, never in build envs.

use std::collections::BTreeMap;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use sha2::{Digest as _, Sha256};

use nullspace_oci::{BlobStore, Credentials, Platform};

use crate::buildkit::{BuildkitDriver, BuildkitJob, Network, Redactor};
use crate::declarative::{render, RenderedDockerfile, Step};
use crate::dockerfile::{DockerfileKind, DockerfileSource, DockerfileSpec};
use crate::engine::{BuildContext, BuildOutcome, Engine, ImageInput};
use crate::error::{io_at, BuildError};
use crate::events::{BuildEvent, EventSink};
use crate::request::{BaseSelector, BuildRequest};

pub use crate::buildkit::BuildkitOptions;

/// Builds the [`DockerfileSpec`] for declarative `steps` on `base` (the plan: its
/// [`RenderedDockerfile`] is what `plan`/`render` show). `context_dir` serves `copy` steps.
pub fn declarative_spec(
    base: &BaseSelector,
    steps: &[Step],
    context_dir: Option<PathBuf>,
) -> Result<(DockerfileSpec, RenderedDockerfile), BuildError> {
    let rendered = render(&base.image_reference()?, steps)?;
    let mut spec = DockerfileSpec::new(DockerfileSource::Content(rendered.dockerfile.clone()));
    spec.context_dir = context_dir;
    spec.build_args = rendered.build_args.clone();
    spec.kind = DockerfileKind::Declarative;
    Ok((spec, rendered))
}

impl Engine {
    /// Builds a Dockerfile with the engine's BuildKit ([`Engine::with_buildkit`]) and
    /// publishes the imported result. `credentials` are the
    /// request's `base_image_auth` (for the final stage's base registry).
    pub async fn build_dockerfile(
        &self,
        request: &BuildRequest,
        spec: &DockerfileSpec,
        credentials: &Credentials,
        events: Arc<dyn EventSink>,
    ) -> Result<BuildOutcome, BuildError> {
        self.build_dockerfile_with(
            self.buildkit_driver(),
            self.buildkit_options(),
            request,
            spec,
            credentials,
            events,
        )
        .await
    }

    /// Renders declarative `steps` on `request.base` and builds them with BuildKit.
    pub async fn build_declarative(
        &self,
        request: &BuildRequest,
        steps: &[Step],
        context_dir: Option<PathBuf>,
        credentials: &Credentials,
        events: Arc<dyn EventSink>,
    ) -> Result<BuildOutcome, BuildError> {
        let (spec, _) = declarative_spec(&request.base, steps, context_dir)?;
        self.build_dockerfile(request, &spec, credentials, events)
            .await
    }

    /// [`Engine::build_dockerfile`] with an explicit driver and options. `request.base` is not
    /// used: the Dockerfile's `FROM` lines are the base. Invalid requests fail before a build
    /// record exists; then `begin` → [`Engine::run_dockerfile`] → `end`.
    pub async fn build_dockerfile_with(
        &self,
        driver: &dyn BuildkitDriver,
        options: &BuildkitOptions,
        request: &BuildRequest,
        spec: &DockerfileSpec,
        credentials: &Credentials,
        events: Arc<dyn EventSink>,
    ) -> Result<BuildOutcome, BuildError> {
        let prepared = self
            .prepare_dockerfile(driver, options, request, spec, credentials, events.clone())
            .await?;
        let mut build = self.begin(request)?;
        let result = self
            .run_prepared(
                driver,
                options,
                request,
                spec,
                credentials,
                events,
                prepared,
                &mut build,
            )
            .await;
        self.end(build, result)
    }

    /// The BuildKit part of a Dockerfile build inside a caller's [`BuildContext`] (from
    /// `begin`/`begin_with`; the caller calls `end`): checks, BuildKit, OCI archive import and
    /// publication.
    #[allow(clippy::too_many_arguments)]
    pub async fn run_dockerfile(
        &self,
        driver: &dyn BuildkitDriver,
        options: &BuildkitOptions,
        request: &BuildRequest,
        spec: &DockerfileSpec,
        credentials: &Credentials,
        events: Arc<dyn EventSink>,
        build: &mut BuildContext,
    ) -> Result<BuildOutcome, BuildError> {
        let prepared = self
            .prepare_dockerfile(driver, options, request, spec, credentials, events.clone())
            .await?;
        self.run_prepared(
            driver,
            options,
            request,
            spec,
            credentials,
            events,
            prepared,
            build,
        )
        .await
    }

    /// Every check that needs no build record, and the BuildKit probe.
    async fn prepare_dockerfile(
        &self,
        driver: &dyn BuildkitDriver,
        options: &BuildkitOptions,
        request: &BuildRequest,
        spec: &DockerfileSpec,
        credentials: &Credentials,
        events: Arc<dyn EventSink>,
    ) -> Result<Prepared, BuildError> {
        // Name, tags and sizes are checked as for any request; the base selector is moot.
        let mut common = request.clone();
        common.base = BaseSelector::DebianImage(None);
        common.validate()?;
        spec.validate(&options.policy, None)?;
        if let Credentials::Bearer(_) = credentials {
            return Err(BuildError::InvalidRequest {
                field: "base_image_auth".into(),
                message: "BuildKit builds take username/password, GCP or ECR credentials only"
                    .into(),
            });
        }
        let info = driver.detect().await?;
        let parsed = spec.validate(&options.policy, Some(info.heredocs))?;
        let basic = self
            .base_credentials(spec, &parsed, credentials, &events)
            .await?;
        if let Some(line) = parsed.syntax_directive {
            events.event(BuildEvent::Warning {
                message: format!(
                    "Dockerfile line {line}: the `# syntax=` directive is ignored; the built-in frontend of BuildKit {} is used",
                    info.buildkit_version
                ),
            });
        }
        events.event(BuildEvent::Message {
            message: format!(
                "buildkit: {} via {} (builder {}, BuildKit {}, {})",
                spec.kind.as_str(),
                info.driver,
                info.builder,
                info.buildkit_version,
                info.endpoint
            ),
        });
        Ok(Prepared { basic, parsed })
    }

    /// `credentials` (the request's `base_image_auth`) as the username/password BuildKit gets
    /// for the registry of the final stage's base. GCP and ECR credentials are exchanged for
    /// short-lived basic credentials with the engine's registry client (as an import does; the
    /// result is cached), unless that registry has no image base or `registry_auth` covers it.
    async fn base_credentials(
        &self,
        spec: &DockerfileSpec,
        parsed: &crate::dockerfile::Dockerfile,
        credentials: &Credentials,
        events: &Arc<dyn EventSink>,
    ) -> Result<Option<(String, String)>, BuildError> {
        let exchanged = match credentials {
            Credentials::Basic { username, password } => {
                return Ok(Some((username.clone(), password.clone())))
            }
            Credentials::Gcp { .. } | Credentials::Ecr { .. } => {
                let Some(registry) = parsed
                    .final_base()
                    .and_then(|base| nullspace_oci::Reference::parse(&base).ok())
                    .map(|reference| reference.registry)
                else {
                    return Ok(None);
                };
                let covered = spec.registry_auth.iter().any(|a| {
                    nullspace_oci::reference::normalize_registry(a.registry.trim()) == registry
                });
                if covered {
                    return Ok(None);
                }
                events.event(BuildEvent::Message {
                    message: format!(
                        "base_image_auth: exchanging {} credentials for registry {registry}",
                        credentials.kind()
                    ),
                });
                self.registry
                    .exchange_credentials(credentials, &registry)
                    .await?
            }
            _ => return Ok(None),
        };
        match exchanged {
            Credentials::Basic { username, password } => Ok(Some((username, password))),
            other => Err(BuildError::Internal(format!(
                "base_image_auth: {} credentials were exchanged for {} credentials",
                credentials.kind(),
                other.kind()
            ))),
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn run_prepared(
        &self,
        driver: &dyn BuildkitDriver,
        options: &BuildkitOptions,
        request: &BuildRequest,
        spec: &DockerfileSpec,
        credentials: &Credentials,
        events: Arc<dyn EventSink>,
        prepared: Prepared,
        build: &mut BuildContext,
    ) -> Result<BuildOutcome, BuildError> {
        let Prepared { basic, parsed } = prepared;
        let scratch = Scratch::create(&build.staging.path().join("buildkit"))?;
        let mut auths: Vec<(String, String, String)> = spec
            .registry_auth
            .iter()
            .map(|a| {
                (
                    nullspace_oci::reference::normalize_registry(a.registry.trim()),
                    a.username.clone(),
                    String::from_utf8_lossy(a.password.expose()).into_owned(),
                )
            })
            .collect();
        if let (Some((user, password)), Some(base)) = (&basic, parsed.final_base()) {
            if let Ok(reference) = nullspace_oci::Reference::parse(&base) {
                if !auths.iter().any(|(host, _, _)| *host == reference.registry) {
                    auths.push((reference.registry, user.clone(), password.clone()));
                }
            }
        }
        let redactor = Redactor::new(
            spec.build_secrets
                .values()
                .map(|v| v.expose())
                .chain(auths.iter().map(|(_, _, p)| p.as_bytes())),
        );
        let job = scratch.prepare(
            spec,
            &parsed.effective_text,
            &auths,
            request,
            options,
            redactor,
        )?;
        let built = driver.build(&job, events.clone()).await;
        scratch.remove_credentials();
        built?;
        let size = std::fs::metadata(&job.output).map(|m| m.len()).unwrap_or(0);
        events.event(BuildEvent::Message {
            message: format!("buildkit: exported the OCI image ({} KiB)", size / 1024),
        });
        let blobs = BlobStore::new(self.data_dir().blobs())?;
        let archive = job.output.clone();
        let image = tokio::task::spawn_blocking(move || {
            nullspace_oci::open_oci_archive(&archive, None, &Platform::host(), &blobs)
        })
        .await
        .map_err(|e| BuildError::Internal(format!("OCI archive import stopped: {e}")))??;
        drop(scratch);
        let digest = hex::encode(Sha256::digest(parsed.effective_text.as_bytes()));
        let requested = match (&spec.dockerfile, spec.kind) {
            (_, DockerfileKind::Declarative) => parsed.final_base().unwrap_or_default(),
            (DockerfileSource::Path(p), _) => p.display().to_string(),
            (DockerfileSource::Content(_), _) => "<inline Dockerfile>".to_string(),
        };
        let source = ImageInput {
            image,
            requested,
            reference: format!("{}@sha256:{digest}", spec.kind.as_str()),
            kind: spec.kind.as_str(),
            backend: "buildkit",
        };
        self.import_image(request, credentials, source, events.clone(), build)
            .await
    }
}

/// What the checks before BuildKit found.
struct Prepared {
    /// `base_image_auth` as username/password for the final stage's base registry (GCP and ECR
    /// credentials already exchanged). A secret: never logged.
    basic: Option<(String, String)>,
    parsed: crate::dockerfile::Dockerfile,
}

/// `<staging>/buildkit/`: BuildKit's inputs and output; removed on drop.
struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    fn create(dir: &Path) -> Result<Scratch, BuildError> {
        private_dir(dir)?;
        Ok(Scratch {
            dir: dir.to_path_buf(),
        })
    }

    fn secrets_dir(&self) -> PathBuf {
        self.dir.join("secrets")
    }

    fn config_dir(&self) -> PathBuf {
        self.dir.join("docker-config")
    }

    /// Writes every input and returns the job.
    fn prepare(
        &self,
        spec: &DockerfileSpec,
        text: &str,
        auths: &[(String, String, String)],
        request: &BuildRequest,
        options: &BuildkitOptions,
        redactor: Redactor,
    ) -> Result<BuildkitJob, BuildError> {
        let dockerfile = self.dir.join("Dockerfile");
        std::fs::write(&dockerfile, text).map_err(io_at(&dockerfile))?;
        // BuildKit prefers `<Dockerfile>.dockerignore` beside the Dockerfile over the context's.
        if let DockerfileSource::Path(original) = &spec.dockerfile {
            let mut name = original.file_name().unwrap_or_default().to_os_string();
            name.push(".dockerignore");
            let beside = original.with_file_name(name);
            if beside.is_file() {
                let target = self.dir.join("Dockerfile.dockerignore");
                std::fs::copy(&beside, &target).map_err(io_at(&target))?;
            }
        }
        let context = match spec.effective_context() {
            Some(dir) => dir,
            None => {
                let empty = self.dir.join("context");
                private_dir(&empty)?;
                empty
            }
        };
        let mut secrets = BTreeMap::new();
        if !spec.build_secrets.is_empty() {
            let dir = self.secrets_dir();
            private_dir(&dir)?;
            for (index, (id, value)) in spec.build_secrets.iter().enumerate() {
                // File names are indexes: ids are validated, but need not be path-safe forever.
                let path = dir.join(format!("secret-{index}"));
                write_private(&path, value.expose())?;
                secrets.insert(id.clone(), path);
            }
        }
        // Without the operator's opt-in, every build gets a private Docker config holding only
        // the request's credentials (possibly none): the client's own `auths`, `credsStore`
        // and `credHelpers` are never lent to a Dockerfile.
        let docker_config = if auths.is_empty() && options.ambient_credentials {
            None
        } else {
            Some(self.docker_config(auths, options.client_config_dir.as_deref())?)
        };
        Ok(BuildkitJob {
            dockerfile,
            context,
            named_contexts: spec.named_contexts.clone(),
            image_contexts: spec.image_contexts.clone(),
            secrets,
            build_args: spec.build_args.clone(),
            network: match (request.internet_access, options.policy.allow_host_network) {
                (false, _) => Network::None,
                (true, true) => Network::Host,
                (true, false) => {
                    return Err(BuildError::InvalidRequest {
                        field: "internet_access".into(),
                        message: crate::buildkit::HOST_NETWORK_REFUSED.into(),
                    })
                }
            },
            ssh: options
                .policy
                .allow_ssh
                .then(|| options.policy.ssh_forward.clone()),
            output: self.dir.join("image.tar"),
            compression: options.compression,
            docker_config,
            no_cache: request.skip_cache,
            redactor,
        })
    }

    /// A Docker config dir holding only `auths` for this build, with the ambient config's
    /// `cli-plugins/` and `buildx/` linked in so buildx and its builders still work.
    fn docker_config(
        &self,
        auths: &[(String, String, String)],
        client_config_dir: Option<&Path>,
    ) -> Result<PathBuf, BuildError> {
        let dir = self.config_dir();
        private_dir(&dir)?;
        let mut entries = serde_json::Map::new();
        for (host, user, password) in auths {
            let key = if host == nullspace_oci::reference::DOCKER_HUB {
                "https://index.docker.io/v1/".to_string()
            } else {
                host.clone()
            };
            let auth =
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            entries.insert(key, serde_json::json!({ "auth": auth }));
        }
        let json = serde_json::json!({ "auths": entries }).to_string();
        let path = dir.join("config.json");
        write_private(&path, json.as_bytes())?;
        if let Some(ambient) = client_config_dir {
            for sub in ["cli-plugins", "buildx"] {
                let source = ambient.join(sub);
                if source.is_dir() {
                    let link = dir.join(sub);
                    std::os::unix::fs::symlink(&source, &link).map_err(io_at(&link))?;
                }
            }
        }
        Ok(dir)
    }

    /// Deletes the secret files and the Docker config (as soon as BuildKit is done).
    fn remove_credentials(&self) {
        let _ = std::fs::remove_dir_all(self.secrets_dir());
        let _ = std::fs::remove_dir_all(self.config_dir());
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn private_dir(dir: &Path) -> Result<(), BuildError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_at(dir))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io_at(dir))
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), BuildError> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io_at(path))?;
    file.write_all(bytes).map_err(io_at(path))
}
