//! The build request model: a request body ([`nullspace_api::BuildRequestBody`]) checked
//! against every rule that spans its fields, and turned into a [`BuildDefinition`] (what is
//! stored and what a retry replays) plus the [`RequestSecrets`] that are never stored.
//!
//! Create, retry, validate and plan all go through [`parse::definition_from_body`] and
//! [`retry::retry_definition`], so the rules live in one place.

pub mod buildkit;
pub mod parse;
pub mod retry;
pub mod secrets;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use nullspace_api::{BuildBackend, ContextManifest, SourceKind, Step};
use nullspace_rootfs::runtime::Readiness;

use crate::request::{BaseSelector, BuildRequest};

pub use buildkit::{buildkit_spec, checked_buildkit_spec};
pub use parse::definition_from_body;
pub use retry::retry_definition;
pub use secrets::RequestSecrets;

/// Limits on what one request may carry, set by the operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestLimits {
    /// Largest total of file content a build's contexts may hold.
    pub max_context_bytes: u64,
}

impl Default for RequestLimits {
    fn default() -> RequestLimits {
        RequestLimits {
            max_context_bytes: 16 << 30,
        }
    }
}

/// Where a build starts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Base {
    /// An OCI image (a `base_image` ref or a selector such as `debian_image`).
    Image {
        /// The selector.
        selector: BaseSelector,
    },
    /// An existing template of the same owner (`from_template`).
    Template {
        /// Its ref (`name`, `name:tag`, `name:tb_...`, `namespace/name:tag`, `tmpl_...`).
        reference: String,
    },
    /// An inline Dockerfile (`dockerfile`), built with BuildKit.
    Dockerfile {
        /// The Dockerfile text.
        content: String,
    },
}

/// A parsed, validated build request, free of secrets: this is what the store keeps as the
/// build's definition and what a retry replays.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildDefinition {
    /// Single-segment template name.
    pub name: String,
    /// Tags (never empty).
    pub tags: Vec<String>,
    /// The base.
    pub base: Base,
    /// Minimum rootfs size in MiB.
    pub disk_mb: Option<u64>,
    /// vCPUs (recorded).
    pub cpu_count: Option<u32>,
    /// Memory in MiB (recorded).
    pub memory_mb: Option<u32>,
    /// Network for build steps.
    pub internet_access: bool,
    /// Bypass every cache.
    pub skip_cache: bool,
    /// What builds it.
    pub build_backend: BuildBackend,
    /// Kind of the base-image credentials the request carried (`basic`, `gcp`, `ecr`), never
    /// the credentials themselves.
    pub base_image_auth_kind: Option<String>,
    /// Declarative steps (built with BuildKit); `build_envs`, `runtime_envs`, `user` and
    /// `workdir` are folded in as steps.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<Step>,
    /// Ids of the request's build secrets, never their values (a retry must send them again).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub build_secret_ids: Vec<String>,
    /// Registries of the request's `registry_auth`, never the credentials.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub registry_auth_hosts: Vec<String>,
    /// The uploaded build context that `copy` steps or the Dockerfile read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_context: Option<ContextManifest>,
    /// `build_context`'s digest and file count, computed once (status polls show them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_summary: Option<(String, usize)>,
    /// Named build contexts of a Dockerfile build, uploaded like `build_context`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub named_contexts: BTreeMap<String, ContextManifest>,
    /// The start command, replacing the image's (recorded in the runtime defaults).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_cmd: Option<String>,
    /// No start command at all, not even the image's.
    #[serde(default)]
    pub no_start_cmd: bool,
    /// The readiness check (`readiness`, or `ready_cmd` as a `command` check).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness: Option<Readiness>,
}

impl BuildDefinition {
    /// The engine's request for an image base.
    pub fn engine_request(&self) -> BuildRequest {
        let selector = match &self.base {
            Base::Image { selector } => selector.clone(),
            // Template bases never reach the image importer; the selector is a placeholder.
            Base::Template { reference } => BaseSelector::BaseImage(reference.clone()),
            // BuildKit reads the base from the Dockerfile's FROM lines.
            Base::Dockerfile { .. } => BaseSelector::DebianImage(None),
        };
        let mut request = BuildRequest::new(&self.name, selector);
        request.tags = self.tags.clone();
        request.disk_mb = self.disk_mb;
        request.cpu_count = self.cpu_count;
        request.memory_mb = self.memory_mb;
        request.internet_access = self.internet_access;
        request.skip_cache = self.skip_cache;
        request.start_cmd = self.start_cmd.clone();
        request.no_start_cmd = self.no_start_cmd;
        request.readiness = self.readiness.clone();
        request
    }

    /// The base as the user would read it.
    pub fn base_description(&self) -> String {
        match &self.base {
            Base::Image { selector } => selector
                .image_reference()
                .unwrap_or_else(|_| format!("{selector:?}")),
            Base::Template { reference } => format!("template {reference}"),
            Base::Dockerfile { .. } => "an inline Dockerfile (BuildKit)".to_string(),
        }
    }

    /// What the build starts from.
    pub fn source_kind(&self) -> SourceKind {
        match &self.base {
            Base::Image { .. } if self.build_backend == BuildBackend::Buildkit => {
                SourceKind::Declarative
            }
            Base::Image { .. } => SourceKind::OciImport,
            Base::Template { .. } => SourceKind::TemplateBase,
            Base::Dockerfile { .. } => SourceKind::Dockerfile,
        }
    }

    /// Whether the build needs request-time values that are held in memory only.
    pub fn needs_request_secrets(&self) -> bool {
        self.base_image_auth_kind.is_some()
            || !self.build_secret_ids.is_empty()
            || !self.registry_auth_hosts.is_empty()
    }
}
