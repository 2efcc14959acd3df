//! The build engine: one road from request to published template.
//!
//! resolve → fetch (blobs into the store, in parallel) → apply + write (or the rootfs cache) →
//! configure (runtime defaults) → publish (atomic rename + one database transaction).

use nullspace_api::{CacheKind, CacheStatus};

use crate::buildkit::BuildkitOptions;
use crate::buildkit::{DockerBuildx, DockerBuildxConfig};
use crate::rootfs_cache::{read_cached_rootfs, rootfs_cache_key, store_cached_rootfs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use futures_util::{stream, StreamExt, TryStreamExt};

use nullspace_oci::{BlobStore, Credentials, Platform, Reference, RegistryClient, RegistryConfig};
use nullspace_rootfs::{build_rootfs, ApplyProgress, LayerInput, LayerStats, RootfsOptions};

use crate::artifact::{
    BuildConfigRecord, LayerRecord, RootfsRecord, SourceRecord, Staging, TemplateDocument,
    ROOTFS_FILE, TEMPLATE_FILE,
};
use crate::build_vm::{VmRuntime, VmSupport};
use crate::data_dir::DataDir;
use crate::error::BuildError;
use crate::events::{BuildEvent, EventSink};
use crate::ids;
use crate::object_storage::ObjectStorage;
use crate::request::{BuildRequest, DEFAULT_DISK_MB};
use crate::store::{Store, LOCAL_NAMESPACE};

/// Layers downloaded at once.
const PARALLEL_DOWNLOADS: usize = 4;

/// What a successful build produced.
#[derive(Clone, Debug, serde::Serialize)]
pub struct BuildOutcome {
    /// Build id.
    pub build_id: String,
    /// Template id.
    pub template_id: String,
    /// Template name.
    pub name: String,
    /// Tags now pointing at it.
    pub tags: Vec<String>,
    /// `namespace/name:tag` of the first tag.
    pub canonical_ref: String,
    /// The artifact dir.
    pub artifact_dir: PathBuf,
    /// The rootfs image.
    pub rootfs_path: PathBuf,
    /// The template description.
    pub template_json_path: PathBuf,
    /// Whether the flattened rootfs came from the cache.
    pub rootfs_cache_hit: bool,
    /// Wall time of the build.
    pub seconds: f64,
    /// The full description.
    pub template: TemplateDocument,
}

/// A build in progress: its ids, its staging dir and when it started.
pub struct BuildContext {
    /// Build id (`tb_...`).
    pub build_id: String,
    /// Template id (`tmpl_...`).
    pub template_id: String,
    /// The build's private scratch dir, removed unless the build publishes.
    pub staging: Staging,
    /// When the build began.
    pub started: Instant,
    /// The database to record an abandoned build in (see `Drop`).
    database: std::path::PathBuf,
    /// Set by [`Engine::end`].
    ended: bool,
    /// The caller records the publication itself (see [`BuildContext::leave_publishing_to_caller`]).
    caller_publishes: bool,
    /// Whose build this is, where stored content is shared by owners who do not trust each
    /// other (see [`BuildContext::restrict_content_to`]).
    content_owner: Option<String>,
}

impl BuildContext {
    /// The engine writes the artifact but neither marks the build ready nor moves its tags:
    /// the caller does both with [`crate::store::publish_rows`] in the transaction that ends
    /// its own record, so no crash can leave a tag on a build its records call unfinished.
    pub fn leave_publishing_to_caller(&mut self) {
        self.caller_publishes = true;
    }

    /// Shared stores serve this build only layer blobs that `owner` fetched from a registry
    /// itself: a stored blob it has not is downloaded again with its credentials (and verified)
    /// before it, or a cached rootfs holding it, is used. Otherwise a manifest listing another
    /// owner's private layer digest would hand that layer over.
    pub fn restrict_content_to(&mut self, owner: &str) {
        self.content_owner = Some(owner.to_string());
    }

    /// Records the publication of `artifact_dir` unless the caller does (removing the
    /// artifact again when that fails).
    pub(crate) fn record_publication(
        &self,
        store: &crate::store::Store,
        tags: &[String],
        artifact_dir: &Path,
    ) -> Result<(), BuildError> {
        if self.caller_publishes {
            return Ok(());
        }
        let recorded = store.publish(
            &self.build_id,
            &self.template_id,
            tags,
            artifact_dir,
            &ids::now_rfc3339(),
        );
        if recorded.is_err() {
            let _ = std::fs::remove_dir_all(artifact_dir);
        }
        recorded
    }
}

impl Drop for BuildContext {
    /// A build dropped without [`Engine::end`] (its future was cancelled) is recorded as
    /// `cancelled` rather than left `building` forever.
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        let marked = crate::store::open_connection(&self.database).and_then(|c| {
            c.execute(
                "UPDATE builds SET status = 'cancelled', error = 'the build was cancelled', finished_at = ?2
                 WHERE id = ?1 AND status = 'building'",
                rusqlite::params![self.build_id, ids::now_rfc3339()],
            )
        });
        if let Err(error) = marked {
            tracing::warn!(
                "build {}: could not record its cancellation: {error}",
                self.build_id
            );
        }
    }
}

/// An image ready to import, and how to describe where it came from.
pub struct ImageInput {
    /// The resolved image; its blobs are fetched from its source unless already stored.
    pub image: nullspace_oci::ResolvedImage,
    /// What the user asked for.
    pub requested: String,
    /// Canonical form of where it came from.
    pub reference: String,
    /// Source kind: `oci_import`, `dockerfile`, `declarative` or `template_base`.
    pub kind: &'static str,
    /// Backend: `native` or `buildkit`.
    pub backend: &'static str,
}

/// Runs builds against one data dir.
pub struct Engine {
    data: DataDir,
    store: Store,
    pub(crate) blobs: BlobStore,
    /// Also used by Dockerfile builds to exchange cloud `base_image_auth` for BuildKit.
    pub(crate) registry: RegistryClient,
    buildkit_driver: DockerBuildx,
    buildkit_options: BuildkitOptions,
    vm: VmSupport,
    require_snapshots: bool,
    /// Where registry layers are shared with the other hosts of a deployment.
    layer_storage: Option<ObjectStorage>,
}

impl Engine {
    /// Opens the engine on `data`, pulling with `registry`'s configuration.
    pub fn open(data: DataDir, registry: RegistryConfig) -> Result<Engine, BuildError> {
        let store = Store::open(&data.database())?;
        let blobs = BlobStore::new(data.blobs())?;
        let registry = RegistryClient::new(registry)?;
        Ok(Engine {
            data,
            store,
            blobs,
            registry,
            buildkit_driver: DockerBuildx::new(DockerBuildxConfig::default()),
            buildkit_options: BuildkitOptions::default(),
            vm: VmSupport::default(),
            require_snapshots: false,
            layer_storage: None,
        })
    }

    /// Where the VM runtime (QEMU, guest kernel) comes from; detected at the first build that
    /// needs it.
    pub fn with_vm(mut self, config: crate::build_vm::VmConfig) -> Engine {
        self.vm = VmSupport::new(config);
        self
    }

    /// Shares registry layers with the other hosts through `storage`: a layer this host lacks
    /// comes from there when the build's owner fetched it from a registry before (on any
    /// host), and every layer downloaded from a registry is sent there (see
    /// [`crate::object_storage`]).
    pub fn with_layer_storage(mut self, storage: ObjectStorage) -> Engine {
        self.layer_storage = Some(storage);
        self
    }

    /// Makes every build boot a VM and publish a snapshot, even without a start command or
    /// readiness (a server option): without a VM runtime, such builds fail.
    pub fn require_snapshots(mut self, required: bool) -> Engine {
        self.require_snapshots = required;
        self
    }

    /// Whether every build boots a VM and publishes a snapshot.
    pub fn requires_snapshots(&self) -> bool {
        self.require_snapshots
    }

    /// The VM runtime, or why there is none.
    pub fn vm_runtime(&self) -> Result<Arc<VmRuntime>, BuildError> {
        self.vm.get(self.data.root())
    }

    /// The BuildKit that Dockerfile and declarative builds use: `docker buildx` with `driver`'s
    /// configuration, and `options` (policy, compression). Without this, `docker` on `PATH`
    /// with the default options.
    pub fn with_buildkit(mut self, driver: DockerBuildxConfig, options: BuildkitOptions) -> Engine {
        self.buildkit_driver = DockerBuildx::new(driver);
        self.buildkit_options = options;
        self
    }

    /// The BuildKit driver (its detection is cached for the engine's life).
    pub fn buildkit_driver(&self) -> &DockerBuildx {
        &self.buildkit_driver
    }

    /// The BuildKit options.
    pub fn buildkit_options(&self) -> &BuildkitOptions {
        &self.buildkit_options
    }

    /// The data dir.
    pub fn data_dir(&self) -> &DataDir {
        &self.data
    }

    /// The durable records.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Builds `request` and publishes it; on failure nothing is published and the staging dir is
    /// gone. `credentials` are used for this request only and never recorded.
    pub async fn build(
        &self,
        request: &BuildRequest,
        credentials: &Credentials,
        events: Arc<dyn EventSink>,
    ) -> Result<BuildOutcome, BuildError> {
        request.validate()?;
        let mut build = self.begin(request)?;
        let result = self
            .import_from_registry(request, credentials, events, &mut build)
            .await;
        self.end(build, result)
    }

    /// Records a new build of `request` as running and makes its staging dir.
    pub fn begin(&self, request: &BuildRequest) -> Result<BuildContext, BuildError> {
        let template_id = self.store.ensure_template(
            &request.name,
            &ids::new_template_id(),
            &ids::now_rfc3339(),
        )?;
        self.begin_with(&ids::new_build_id(), &template_id)
    }

    /// Like [`Engine::begin`], for a caller (the build service) that already allotted the ids.
    pub fn begin_with(
        &self,
        build_id: &str,
        template_id: &str,
    ) -> Result<BuildContext, BuildError> {
        let started = Instant::now();
        self.store
            .start_build(build_id, template_id, &ids::now_rfc3339())?;
        let staging = Staging::create(&self.data.staging(), build_id)?;
        Ok(BuildContext {
            build_id: build_id.to_string(),
            template_id: template_id.to_string(),
            staging,
            started,
            database: self.data.database(),
            ended: false,
            caller_publishes: false,
            content_owner: None,
        })
    }

    /// Records how a build begun with [`Engine::begin`] ended; its staging dir goes away.
    pub fn end(
        &self,
        mut build: BuildContext,
        result: Result<BuildOutcome, BuildError>,
    ) -> Result<BuildOutcome, BuildError> {
        build.ended = true;
        if let Err(error) = &result {
            self.store
                .fail_build(&build.build_id, &error.to_string(), &ids::now_rfc3339())?;
        }
        drop(build);
        result
    }

    /// Resolves the request's base image in its registry, then imports and publishes it.
    pub async fn import_from_registry(
        &self,
        request: &BuildRequest,
        credentials: &Credentials,
        events: Arc<dyn EventSink>,
        build: &mut BuildContext,
    ) -> Result<BuildOutcome, BuildError> {
        let requested = request.base.image_reference()?;
        let reference = Reference::parse(&requested)?;
        events.event(BuildEvent::Message {
            message: format!("resolving {reference}"),
        });
        let image = self
            .registry
            .resolve(&reference, credentials, &Platform::host())
            .await?;
        let source = ImageInput {
            image,
            requested,
            reference: reference.to_string(),
            kind: "oci_import",
            backend: "native",
        };
        self.import_image(request, credentials, source, events, build)
            .await
    }

    /// Imports a resolved image (from a registry, or a local OCI archive whose blobs are already
    /// in the store) into a rootfs and publishes the template.
    pub async fn import_image(
        &self,
        request: &BuildRequest,
        credentials: &Credentials,
        source: ImageInput,
        events: Arc<dyn EventSink>,
        build: &mut BuildContext,
    ) -> Result<BuildOutcome, BuildError> {
        let ImageInput {
            image,
            requested,
            reference,
            kind,
            backend,
        } = source;
        let build_id = build.build_id.as_str();
        let template_id = build.template_id.as_str();
        let staging = &mut build.staging;
        let started = build.started;
        let platform = image.platform.to_string();
        events.event(BuildEvent::Resolved {
            reference: reference.clone(),
            digest: image.manifest_digest.to_string(),
            platform: platform.clone(),
            layers: image
                .manifest
                .layers
                .iter()
                .map(|l| (l.digest.to_string(), l.size))
                .collect(),
        });
        let imported =
            nullspace_rootfs::runtime::import_config(&image.config_raw).map_err(|source| {
                BuildError::ImageConfig {
                    image: reference.to_string(),
                    source,
                }
            })?;
        for warning in &imported.warnings {
            events.event(BuildEvent::Warning {
                message: warning.clone(),
            });
        }
        // Kept with the layers, so that steps on this template can hand its image to BuildKit.
        self.blobs.import(
            &image.config_raw[..],
            &image.manifest.config.digest,
            image.config_raw.len() as u64,
        )?;
        let diff_ids = &image.config.rootfs.diff_ids;
        let layers: Vec<LayerRecord> = image
            .manifest
            .layers
            .iter()
            .enumerate()
            .map(|(i, l)| LayerRecord {
                digest: l.digest.to_string(),
                media_type: l.media_type.clone(),
                size: l.size,
                diff_id: diff_ids.get(i).map(|d| d.to_string()),
            })
            .collect();
        if !diff_ids.is_empty() && diff_ids.len() != layers.len() {
            return Err(BuildError::Rootfs(
                nullspace_rootfs::RootfsError::DiffIdMismatch {
                    layer: reference.to_string(),
                    expected: format!("{} layers in the manifest", layers.len()),
                    actual: format!("{} diff_ids in the config", diff_ids.len()),
                },
            ));
        }
        // Where owners share the stores, this owner's own fetch of every layer comes before any
        // stored blob or cached rootfs is used.
        let mut fetched = match &build.content_owner {
            Some(owner) => Some(
                self.fetch_layers(&image, credentials, &layers, events.clone(), Some(owner))
                    .await?,
            ),
            None => None,
        };
        let runtime_defaults = {
            let mut runtime = imported.runtime.clone();
            request.apply_runtime_overrides(&mut runtime);
            runtime
        };
        let needs_vm = runtime_defaults.start_cmd.is_some()
            || runtime_defaults.readiness.is_some()
            || self.require_snapshots;
        // Without a VM runtime, fail before any download or write.
        let vm_runtime = if needs_vm {
            Some(self.vm_runtime()?)
        } else {
            None
        };
        let options = RootfsOptions {
            min_size_bytes: Some(request.disk_mb.unwrap_or(DEFAULT_DISK_MB) * 1024 * 1024),
            ..RootfsOptions::default()
        };
        let cache_key = rootfs_cache_key(&layers, &options);
        let staged_rootfs = staging.path().join(ROOTFS_FILE);
        let cached = self.data.rootfs_cache().join(format!("{cache_key}.ext4"));
        let cached_summary = self.data.rootfs_cache().join(format!("{cache_key}.json"));
        // The finished rootfs of this layer chain and these options: the final artifact (the
        // runtime defaults are derived from the image config again, which costs nothing).
        let subject = format!("rootfs of {} layer(s) of {reference}", layers.len());
        let hit = if request.skip_cache {
            events.event(BuildEvent::Cache {
                kind: CacheKind::FinalArtifact,
                status: CacheStatus::Bypass,
                reason: Some("whole_build_skip_cache"),
                subject: subject.clone(),
            });
            None
        } else {
            read_cached_rootfs(&cached, &cached_summary, &staged_rootfs)
        };
        let rootfs_cache_hit = hit.is_some();
        let (size_bytes, entries) = match hit {
            Some(found) => {
                events.event(BuildEvent::Cache {
                    kind: CacheKind::FinalArtifact,
                    status: CacheStatus::Hit,
                    reason: None,
                    subject,
                });
                found
            }
            None => {
                if !request.skip_cache {
                    events.event(BuildEvent::Cache {
                        kind: CacheKind::FinalArtifact,
                        status: CacheStatus::Miss,
                        reason: Some("missing_or_incompatible"),
                        subject: subject.clone(),
                    });
                }
                let inputs = match fetched.take() {
                    Some(inputs) => inputs,
                    None => {
                        self.fetch_layers(&image, credentials, &layers, events.clone(), None)
                            .await?
                    }
                };
                let summary = self
                    .write_rootfs(inputs, &staged_rootfs, options, events.clone())
                    .await?;
                if !request.skip_cache {
                    store_cached_rootfs(
                        &staged_rootfs,
                        &cached,
                        &cached_summary,
                        summary.size_bytes,
                        summary.entries,
                    )?;
                    events.event(BuildEvent::Cache {
                        kind: CacheKind::FinalArtifact,
                        status: CacheStatus::Stored,
                        reason: None,
                        subject,
                    });
                }
                (summary.size_bytes, summary.entries)
            }
        };
        let mut warnings = imported.warnings;
        let snapshot = match &vm_runtime {
            Some(vm) => Some(
                crate::build_vm::snapshot_stage(
                    vm,
                    self.data.root(),
                    build_id,
                    request,
                    &runtime_defaults,
                    staging.path(),
                    &cache_key,
                    self.buildkit_options.policy.allow_host_network,
                    events.clone(),
                )
                .await?,
            ),
            None => {
                let warning = crate::build_vm::ROOTFS_ONLY_WARNING.to_string();
                events.event(BuildEvent::Warning {
                    message: warning.clone(),
                });
                warnings.push(warning);
                None
            }
        };
        let canonical_ref = format!(
            "{LOCAL_NAMESPACE}/{}:{}",
            request.name,
            request
                .tags
                .first()
                .map(String::as_str)
                .unwrap_or("default")
        );
        let document = TemplateDocument {
            schema_version: 1,
            build_id: build_id.to_string(),
            template_id: template_id.to_string(),
            name: request.name.clone(),
            tags: request.tags.clone(),
            source: SourceRecord {
                kind: kind.into(),
                requested,
                reference: reference.to_string(),
                manifest_digest: image.manifest_digest.to_string(),
                config_digest: image.manifest.config.digest.to_string(),
                platform,
                layers,
            },
            runtime_defaults,
            oci_metadata: imported.metadata,
            rootfs: RootfsRecord {
                path: ROOTFS_FILE.into(),
                size_bytes,
                entries,
                writer_version: nullspace_ext4::WRITER_VERSION.into(),
                cache_key,
            },
            build_config: BuildConfigRecord {
                build_backend: backend.into(),
                disk_mb: request.disk_mb,
                cpu_count: request.cpu_count,
                memory_mb: request.memory_mb,
                internet_access: request.internet_access,
                skip_cache: request.skip_cache,
                base_image_auth_kind: (!matches!(credentials, Credentials::Anonymous))
                    .then(|| credentials.kind().to_string()),
            },
            warnings,
            snapshot,
            created_at: ids::now_rfc3339(),
        };
        let destination = self.data.templates().join(build_id);
        let artifact_dir = staging.publish(&document, &destination)?;
        build.record_publication(&self.store, &request.tags, &artifact_dir)?;
        Ok(BuildOutcome {
            build_id: build_id.to_string(),
            template_id: template_id.to_string(),
            name: request.name.clone(),
            tags: request.tags.clone(),
            canonical_ref,
            rootfs_path: artifact_dir.join(ROOTFS_FILE),
            template_json_path: artifact_dir.join(TEMPLATE_FILE),
            artifact_dir,
            rootfs_cache_hit,
            seconds: started.elapsed().as_secs_f64(),
            template: document,
        })
    }

    /// Brings every layer blob into the store, several at once, and returns them bottom-up.
    ///
    /// With an `owner` (see [`BuildContext::restrict_content_to`]), a stored blob counts only
    /// if that owner fetched it from a registry before (on this host, or on any host of the
    /// deployment when layers are shared: [`Engine::with_layer_storage`]); otherwise it is
    /// downloaded again with `credentials` and verified, and the owner's access recorded.
    async fn fetch_layers(
        &self,
        image: &nullspace_oci::ResolvedImage,
        credentials: &Credentials,
        layers: &[LayerRecord],
        events: Arc<dyn EventSink>,
        owner: Option<&str>,
    ) -> Result<Vec<LayerInput>, BuildError> {
        let from_registry = matches!(image.source, nullspace_oci::ImageSource::Registry { .. });
        let downloads = image
            .manifest
            .layers
            .iter()
            .enumerate()
            .map(|(index, descriptor)| {
                let events = events.clone();
                async move {
                    let total = descriptor.size;
                    let digest = descriptor.digest.to_string();
                    let owner = owner.filter(|_| from_registry);
                    // Local sources (uploaded archives, BuildKit's output) bring their blobs.
                    let proven_here = match owner {
                        Some(owner) => self.store.has_blob_access(owner, &digest)?,
                        None => true,
                    };
                    let progress = {
                        let events = events.clone();
                        move |bytes: u64| {
                            events.event(BuildEvent::Download {
                                index,
                                bytes,
                                total,
                            })
                        }
                    };
                    let present = self.blobs.contains_sized(&descriptor.digest, total);
                    let (path, origin) = if proven_here && present {
                        progress(total);
                        (self.blobs.path(&descriptor.digest), LayerOrigin::Local)
                    } else if let Some(path) = match from_registry {
                        // A local image (BuildKit's output) brings its own layers.
                        true => {
                            self.shared_layer(owner, proven_here, descriptor, present, &progress)
                                .await?
                        }
                        false => None,
                    } {
                        (path, LayerOrigin::Shared)
                    } else {
                        let path = self
                            .registry
                            .fetch_blob_fresh(
                                image,
                                descriptor,
                                credentials,
                                &self.blobs,
                                &progress,
                            )
                            .await?;
                        (path, LayerOrigin::Registry)
                    };
                    if let Some(owner) = owner {
                        self.store.record_blob_access(owner, &digest)?;
                    }
                    match (&origin, owner, &self.layer_storage) {
                        (LayerOrigin::Local, ..) => {
                            // Reused: the collector keeps recently used blobs longest.
                            crate::gc::touch(&path);
                        }
                        (LayerOrigin::Registry, Some(owner), Some(storage)) => {
                            // In the background: sharing is an optimisation, and neither its time
                            // nor its failure (other hosts download the layer themselves) is
                            // this build's.
                            let (storage, owner, digest, path) = (
                                storage.clone(),
                                owner.to_string(),
                                digest.clone(),
                                path.clone(),
                            );
                            tokio::spawn(async move {
                                if let Err(error) =
                                    storage.put_layer_blob(&owner, &digest, &path).await
                                {
                                    tracing::warn!(%digest, %error, "could not share a layer");
                                }
                            });
                        }
                        _ => {}
                    }
                    let cached = !matches!(origin, LayerOrigin::Registry);
                    events.event(BuildEvent::Downloaded { index, cached });
                    events.event(BuildEvent::Cache {
                        kind: CacheKind::Layer,
                        status: if cached {
                            CacheStatus::Hit
                        } else {
                            CacheStatus::Stored
                        },
                        reason: None,
                        subject: match origin {
                            LayerOrigin::Shared => {
                                format!("blob {} (from shared storage)", descriptor.digest)
                            }
                            _ => format!("blob {}", descriptor.digest),
                        },
                    });
                    Ok::<_, BuildError>(path)
                }
            });
        let paths: Vec<PathBuf> = stream::iter(downloads)
            .buffered(PARALLEL_DOWNLOADS)
            .try_collect()
            .await?;
        Ok(layers
            .iter()
            .zip(paths)
            .map(|(layer, path)| LayerInput {
                digest: layer.digest.clone(),
                media_type: layer.media_type.clone(),
                diff_id: layer.diff_id.clone(),
                path,
                size: layer.size,
            })
            .collect())
    }

    /// The registry layer `descriptor` from the deployment's shared storage, when there is one
    /// and the build may have it: without an `owner` (a single-tenant build), when the owner's
    /// access was proven on this host, or when the owner's own verified registry download of it
    /// is recorded there. `None` sends the caller to the registry, also when the shared copy
    /// failed (which is logged). Never used for local images.
    async fn shared_layer(
        &self,
        owner: Option<&str>,
        proven_here: bool,
        descriptor: &nullspace_oci::Descriptor,
        present: bool,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<Option<PathBuf>, BuildError> {
        let Some(storage) = &self.layer_storage else {
            return Ok(None);
        };
        let digest = &descriptor.digest;
        let allowed = match owner {
            Some(owner) if !proven_here => storage
                .owner_fetched_layer(owner, &digest.to_string())
                .await
                .unwrap_or_else(|error| {
                    tracing::warn!(%digest, %error, "shared layer marks unreadable");
                    false
                }),
            _ => true,
        };
        if !allowed {
            return Ok(None);
        }
        if present {
            progress(descriptor.size);
            return Ok(Some(self.blobs.path(digest)));
        }
        match storage
            .fetch_layer_blob(digest, descriptor.size, &self.blobs, progress)
            .await
        {
            Ok(found) => Ok(found),
            Err(error) => {
                tracing::warn!(%digest, %error, "shared layer unusable; downloading it from the registry");
                Ok(None)
            }
        }
    }

    /// Applies the layers and writes the image on a blocking thread.
    async fn write_rootfs(
        &self,
        inputs: Vec<LayerInput>,
        output: &Path,
        options: RootfsOptions,
        events: Arc<dyn EventSink>,
    ) -> Result<nullspace_rootfs::RootfsSummary, BuildError> {
        let output = output.to_path_buf();
        // Dropping this future (a cancelled or timed-out build) stops the writer at its next
        // read instead of leaving it running on the blocking pool.
        let stop = StopOnDrop(Arc::new(std::sync::atomic::AtomicBool::new(false)));
        let mut options = options;
        options.stop = Some(stop.0.clone());
        tokio::task::spawn_blocking(move || {
            let progress = EventProgress {
                events,
                sizes: inputs.iter().map(|l| l.size).collect(),
            };
            build_rootfs(&inputs, &output, &options, &progress)
        })
        .await
        .map_err(|e| BuildError::Internal(format!("rootfs writer stopped: {e}")))?
        .map_err(BuildError::from)
    }
}

/// Where a build's layer blob came from.
enum LayerOrigin {
    /// This host's blob store.
    Local,
    /// The deployment's shared storage.
    Shared,
    /// The image's registry (downloaded and verified now).
    Registry,
}

/// Sets its flag when dropped.
struct StopOnDrop(Arc<std::sync::atomic::AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Forwards the rootfs builder's progress as build events.
struct EventProgress {
    events: Arc<dyn EventSink>,
    sizes: Vec<u64>,
}

impl ApplyProgress for EventProgress {
    fn layer_progress(&self, index: usize, compressed_bytes: u64) {
        self.events.event(BuildEvent::Apply {
            index,
            bytes: compressed_bytes,
            total: self.sizes.get(index).copied().unwrap_or(0),
        });
    }
    fn layer_finished(&self, index: usize, stats: &LayerStats) {
        self.events.event(BuildEvent::Applied {
            index,
            entries: stats.entries,
        });
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn status(data: &DataDir, build_id: &str) -> String {
        crate::store::open_connection(&data.database())
            .unwrap()
            .query_row("SELECT status FROM builds WHERE id = ?1", [build_id], |r| {
                r.get(0)
            })
            .unwrap()
    }

    #[test]
    fn a_dropped_build_is_recorded_cancelled_and_its_staging_dir_removed() {
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir::open(dir.path()).unwrap();
        let engine = Engine::open(data.clone(), RegistryConfig::default()).unwrap();
        let request = BuildRequest::new("dropped", crate::BaseSelector::DebianImage(None));
        let build = engine.begin(&request).unwrap();
        let (id, staging) = (build.build_id.clone(), build.staging.path().to_path_buf());
        assert_eq!(status(&data, &id), "building");
        drop(build);
        assert_eq!(status(&data, &id), "cancelled");
        assert!(!staging.exists());
        // A build that ended keeps its recorded outcome.
        let build = engine.begin(&request).unwrap();
        let id = build.build_id.clone();
        let _ = engine.end(build, Err(BuildError::Internal("boom".into())));
        assert_eq!(status(&data, &id), "error");
    }
}
