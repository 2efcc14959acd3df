//! Response bodies: the build object (§3.4), build status with log entries, template details
//! (§3.9), history, tags, validation (§3.1), plans (§3.8) and upload negotiation.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use nullspace_rootfs::runtime::{OciMetadata, Readiness};

use crate::enums::{BuildBackend, BuildStatus, FailurePhase, SourceKind, TriggeredBy, Visibility};
use crate::error::ErrorDetail;
use crate::log::{CacheSummary, LogEntry};

/// The resources a build asked for (`build_config`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BuildConfig {
    /// vCPUs.
    pub vcpus: Option<u32>,
    /// Memory in MiB.
    pub memory_mib: Option<u32>,
    /// Network for build steps.
    pub internet_access: bool,
    /// Rootfs size in MiB.
    pub disk_mb: Option<u64>,
    /// Whether every cache was bypassed.
    pub skip_cache: bool,
}

/// Whether the build's artifact can be used (`artifact_availability`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ArtifactAvailability {
    /// Whether it can.
    pub available: bool,
    /// Why not (`build_not_ready`, `artifact_missing`).
    pub reason: Option<String>,
}

/// Whether a tag can be moved to the build (`promotability`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Promotability {
    /// Whether it can.
    pub promotable: bool,
    /// Why not.
    pub reason: Option<String>,
}

/// A template's runtime defaults as the API shows them: env keys, never their values.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(as = RuntimeDefaults)]
pub struct RuntimeDefaultsView {
    /// Names of the default env vars.
    pub default_env_keys: Vec<String>,
    /// The start command.
    pub start_cmd: Option<String>,
    /// The default user.
    pub default_user: Option<String>,
    /// The default working directory.
    pub default_workdir: Option<String>,
    /// The readiness check.
    pub readiness: Option<Readiness>,
}

/// The fields a build object and a history row share.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BuildSummary {
    /// `tb_...`.
    pub build_id: String,
    /// `tmpl_...`.
    pub template_id: String,
    /// Template name.
    pub name: String,
    /// Tags requested (and promoted to it).
    pub tags: Vec<String>,
    /// Where the build is.
    pub status: BuildStatus,
    /// What it starts from.
    pub source_kind: SourceKind,
    /// What builds it.
    pub build_backend: BuildBackend,
    /// Kind of base-image credentials the request carried (`basic`, `gcp`, `ecr`).
    pub base_image_auth_kind: Option<String>,
    /// What started it.
    pub triggered_by: TriggeredBy,
    /// The build this one retries.
    pub retry_of: Option<String>,
    /// RFC 3339 times.
    pub created_at: String,
    /// Last change.
    pub updated_at: String,
    /// When it entered the queue.
    pub queued_at: String,
    /// When it started running.
    pub started_at: Option<String>,
    /// When it ended.
    pub finished_at: Option<String>,
    /// Running time.
    pub duration_ms: Option<u64>,
    /// The phase it failed in.
    pub failure_phase: Option<FailurePhase>,
    /// The failure message (legacy field; see `error_detail`).
    pub error: Option<String>,
    /// The failure.
    pub error_detail: Option<ErrorDetail>,
    /// Manifest digest of the source image.
    pub source_digest: Option<String>,
    /// Digest of the uploaded build context.
    pub context_digest: Option<String>,
    /// Files in the uploaded build context.
    pub context_file_count: Option<u64>,
    /// Digest of the Dockerfile.
    pub dockerfile_digest: Option<String>,
    /// Cache decisions, counted.
    pub cache_summary: CacheSummary,
    /// Whether the artifact can be used.
    pub artifact_availability: ArtifactAvailability,
    /// Whether a tag can be moved to it.
    pub promotability: Promotability,
    /// When the artifact may be removed (never, today).
    pub retention_expires_at: Option<String>,
    /// OCI metadata hints of the built image.
    pub oci_metadata: Option<OciMetadata>,
}

/// The build object (responses of start, get, cancel, retry, promote).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Build {
    /// The shared fields.
    #[serde(flatten)]
    pub summary: BuildSummary,
    /// `owner/name:tag`.
    pub canonical_ref: String,
    /// The owner's namespace.
    pub namespace_slug: String,
    /// The resources asked for.
    pub build_config: BuildConfig,
    /// Runtime defaults of a ready build.
    pub runtime_defaults: Option<RuntimeDefaultsView>,
}

/// A row of a template's build history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct HistoryRow {
    /// The shared fields.
    #[serde(flatten)]
    pub summary: BuildSummary,
    /// Artifacts of the build (its id, when ready).
    pub artifact_ids: Vec<String>,
}

/// `GET /v1/templates/{template}/builds`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct HistoryPage {
    /// Newest first.
    pub builds: Vec<HistoryRow>,
    /// Pass as `cursor` for the next page.
    pub next_cursor: Option<String>,
}

/// `GET /v1/templates/builds/{build_id}`: the build and its log from `offset`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BuildStatusPage {
    /// The build.
    pub build: Build,
    /// Log entries from the requested offset (at most 1000).
    pub entries: Vec<LogEntry>,
    /// The offset to ask for next.
    pub next_offset: u64,
}

/// `{build}`: the cancel response.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BuildEnvelope {
    /// The build.
    pub build: Build,
}

/// The promote and tag-assignment response.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Promoted {
    /// The build the tag now points at.
    pub build: Build,
    /// The tag.
    pub tag: String,
    /// `owner/name:tag`.
    pub canonical_ref: String,
}

/// A tag and the build it points at.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TagRef {
    /// The tag.
    pub tag: String,
    /// The build.
    pub build_id: String,
}

/// `GET /v1/templates/{template}/tags`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TagList {
    /// Every tag.
    pub tags: Vec<TagRef>,
    /// The tag refs without one resolve to.
    pub default_tag: Option<String>,
}

/// Template details (§3.9). With a `fields` mask only the named fields are present.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(as = Template)]
pub struct TemplateDetails {
    /// `tmpl_...`.
    pub id: String,
    /// Name.
    pub name: String,
    /// Description (none yet).
    pub description: Option<String>,
    /// Whether the template is built in.
    pub builtin: bool,
    /// `owner/name:tag`.
    pub canonical_ref: String,
    /// The owner's namespace.
    pub namespace_slug: String,
    /// Who may use it.
    pub visibility: Visibility,
    /// Its tags.
    pub tags: Vec<String>,
    /// The tag refs without one resolve to.
    pub default_tag: Option<String>,
    /// Other names it answers to.
    pub aliases: Vec<String>,
    /// The build the ref resolves to.
    pub build_id: Option<String>,
    /// That build's runtime defaults.
    pub runtime_defaults: Option<RuntimeDefaultsView>,
}

/// The fields a `fields` mask may name.
pub const TEMPLATE_MASK_FIELDS: &[&str] = &[
    "id",
    "name",
    "description",
    "tags",
    "default_tag",
    "builtin",
    "canonical_ref",
    "namespace_slug",
    "visibility",
];

/// `GET /v1/templates`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TemplateList {
    /// The caller's templates (masked like [`TemplateDetails`]).
    #[schema(value_type = Vec<TemplateDetails>)]
    pub templates: Vec<serde_json::Value>,
}

/// One problem `validate` found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ValidationIssue {
    /// The error code.
    pub code: String,
    /// What is wrong, naming the field.
    pub message: String,
    /// The phase (`prepare`).
    pub phase: FailurePhase,
}

/// `POST /v1/templates/validate`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(as = ValidationResult)]
pub struct Validation {
    /// Whether the request would be accepted.
    pub valid: bool,
    /// Why not.
    pub errors: Vec<ValidationIssue>,
    /// What the user should know.
    pub warnings: Vec<String>,
}

/// An uploaded context, summarised.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ContextSummary {
    /// Digest of the canonical manifest.
    pub context_digest: String,
    /// Files in it.
    pub file_count: u64,
}

/// What a build would do (§3.8).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BuildPlan {
    /// What it starts from.
    pub source_kind: SourceKind,
    /// The rendered Dockerfile of declarative steps.
    pub dockerfile: Option<String>,
    /// Names of the build envs (never values).
    pub build_env_keys: Vec<String>,
    /// Ids of the build secrets (never values).
    pub build_secret_ids: Vec<String>,
    /// What builds it.
    pub build_backend: BuildBackend,
    /// Template name.
    pub name: String,
    /// Tags.
    pub tags: Vec<String>,
    /// The base image, normalised.
    pub base_image: Option<String>,
    /// The base template's canonical ref.
    pub base_template: Option<String>,
    /// Commands run in the build VM (none yet).
    pub run_steps: Vec<String>,
    /// Build steps (described in `dockerfile`).
    #[schema(value_type = Vec<Object>)]
    pub build_steps: Vec<serde_json::Value>,
    /// Build env values shown (none: values stay secret).
    pub build_envs: BTreeMap<String, String>,
    /// Env assignments shown (none).
    pub env_assignments: Vec<(String, String)>,
    /// Names of the template's env defaults, when known before the build.
    pub default_env_keys: Option<Vec<String>>,
    /// Dockerfile instructions ignored.
    pub ignored_instructions: Vec<String>,
    /// The start command.
    pub start_cmd: Option<String>,
    /// The default user.
    pub default_user: Option<String>,
    /// The default working directory.
    pub default_workdir: Option<String>,
    /// The readiness check.
    pub readiness: Option<Readiness>,
    /// Why instructions were ignored.
    #[schema(value_type = Vec<Object>)]
    pub ignored_instruction_warnings: Vec<serde_json::Value>,
    /// The resources asked for.
    pub build_config: BuildConfig,
    /// The build VM that runs the start command and readiness, with the defaults filled in.
    pub build_vm: BuildVmPlan,
}

/// The build VM of a plan: what it gets and when it runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BuildVmPlan {
    /// When a VM boots: `start_cmd_or_readiness` (the template has either, an imported image's
    /// Entrypoint/Cmd included), `always` (the server requires snapshots).
    pub runs_when: String,
    /// vCPUs.
    pub cpu_count: u32,
    /// Guest RAM in MiB.
    pub memory_mb: u32,
    /// Rootfs size in MiB (at least; larger contents grow it).
    pub disk_mb: u64,
    /// Without readiness: how long the start command may settle before the snapshot.
    pub settle_ms_without_readiness: u64,
}

/// `POST /v1/templates/plan`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PlanResponse {
    /// The plan.
    pub build_plan: BuildPlan,
    /// What the user should know.
    pub warnings: Vec<String>,
    /// Whether the request carried base-image credentials.
    pub requires_base_image_auth: bool,
    /// Manifest digest of the source (known after the build resolves it).
    pub source_digest: Option<String>,
    /// The uploaded context, summarised.
    pub context_manifest: Option<ContextSummary>,
    /// Digest of the Dockerfile.
    pub dockerfile_digest: Option<String>,
}

/// `POST /v1/templates/build-context/blobs/missing`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MissingBlobs {
    /// The digests the caller has not uploaded.
    pub missing: Vec<String>,
}

/// `PUT /v1/templates/build-context/blobs/{digest}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UploadedBlob {
    /// The digest.
    pub digest: String,
    /// Its size in bytes.
    pub size: u64,
}

/// `GET /healthz`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// `ok`.
    pub status: String,
}
