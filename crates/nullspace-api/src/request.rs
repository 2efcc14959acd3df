//! Request bodies (spec §3.2, §3.7). Every struct refuses unknown fields, so a misspelt field
//! is an error naming its JSON path rather than silently ignored. These types are the shape
//! only; the rules that span fields (one base, steps only with BuildKit, ...) are applied by
//! the engine's request model (`nullspace_build::definition`).

use std::collections::BTreeMap;

use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::ToSchema;

use crate::context::ContextManifest;
use crate::enums::BuildBackend;
use crate::secret::SecretString;
use crate::steps::Step;

/// `POST /v1/templates/builds` (also `/validate` and `/plan`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(as = BuildRequest)]
#[serde(deny_unknown_fields)]
pub struct BuildRequestBody {
    /// Single-segment template name; `alias` when absent, generated when both are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The SDK builders' name field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    /// Tags for the result; `["default"]` when absent; an empty list is invalid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<String>>,
    /// An OCI image reference to import (or one of `base`, `dockerfile`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_image: Option<String>,
    /// A base selector (or one of `base_image`, `dockerfile`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<BaseSpec>,
    /// Credentials for a private base image, used for this request only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_image_auth: Option<BaseImageAuth>,
    /// Rootfs size in MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_mb: Option<u64>,
    /// vCPUs of the build VM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_count: Option<u32>,
    /// Memory of the build VM in MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u32>,
    /// Whether build steps may reach the network (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub internet_access: Option<bool>,
    /// Bypass every cache (default false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip_cache: Option<bool>,
    /// `native` or `buildkit`; chosen from the request when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_backend: Option<BuildBackend>,
    /// Inline Dockerfile text (built with BuildKit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dockerfile: Option<String>,
    /// Declarative steps, in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<Vec<Step>>,
    /// Env for the build steps only, never persisted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_envs: Option<BTreeMap<String, String>>,
    /// Env defaults of the template's sandboxes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_envs: Option<BTreeMap<String, String>>,
    /// Default user (`name`, `uid`, `user:group`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Default working directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// BuildKit secrets (`RUN --mount=type=secret,id=ID`), used for this request only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_secrets: Option<BuildSecrets>,
    /// Per-registry credentials of BuildKit builds, used for this request only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry_auth: Option<Vec<RegistryAuth>>,
    /// The uploaded build context that copies or the Dockerfile read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_context: Option<ContextManifest>,
    /// Named build contexts of a Dockerfile build (`FROM name`, `COPY --from=name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_contexts: Option<BTreeMap<String, ContextManifest>>,
    /// The start command, replacing the image's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_cmd: Option<String>,
    /// `true`: no start command, not even the image's `Entrypoint`/`Cmd`, and so no readiness
    /// (not even the image's HEALTHCHECK): a rootfs-only template unless the server requires
    /// snapshots. Not combined with `start_cmd`, `ready_cmd` or `readiness`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_start_cmd: Option<bool>,
    /// A readiness command (exit 0 means ready); or `readiness`, not both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_cmd: Option<String>,
    /// The readiness check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness: Option<ReadinessSpec>,
}

/// A base selector: `{"kind": "debian_image", "value": "bookworm"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(as = BaseSelector)]
#[serde(deny_unknown_fields)]
pub struct BaseSpec {
    /// Which base.
    pub kind: BaseKind,
    /// Its version, image reference or template ref (optional for `debian_image`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// The kinds of [`BaseSpec`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BaseKind {
    /// `ubuntu:<value>`.
    UbuntuImage,
    /// `debian:<value>` (default `bookworm`).
    DebianImage,
    /// `python:<value>`.
    PythonImage,
    /// `node:<value>`.
    NodeImage,
    /// `oven/bun:<value>`.
    BunImage,
    /// Any OCI image.
    Image,
    /// Any OCI image, named as a base.
    BaseImage,
    /// An existing template of the caller.
    Template,
    /// Not a selector: the Dockerfile's text goes in `dockerfile`.
    Dockerfile,
}

/// The kinds of [`BaseImageAuth`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AuthKind {
    /// `username` and `password`.
    #[default]
    Basic,
    /// A GCP service-account key (`service_account_json`), exchanged for a token.
    Gcp,
    /// AWS keys (`access_key_id`, `secret_access_key`, `region`) for ECR.
    Ecr,
}

/// Base-image credentials: `{username, password}` (kind `basic`, the default),
/// `{kind: "gcp", service_account_json}` or `{kind: "ecr", access_key_id, secret_access_key,
/// region}`. Which fields a kind takes is checked by the request model.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BaseImageAuth {
    /// The kind (default `basic`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<AuthKind>,
    /// `basic`: user name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// `basic`: password or token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<SecretString>,
    /// `gcp`: the service-account key JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_json: Option<SecretString>,
    /// `ecr`: access key id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<String>,
    /// `ecr`: secret access key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_access_key: Option<SecretString>,
    /// `ecr`: region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
}

impl BaseImageAuth {
    /// Replaces every secret value with `<redacted>`.
    pub fn redact(&mut self) {
        for secret in [
            &mut self.password,
            &mut self.service_account_json,
            &mut self.secret_access_key,
        ]
        .into_iter()
        .flatten()
        {
            secret.redact();
        }
    }
}

/// One registry's credentials for a BuildKit build.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegistryAuth {
    /// The registry host (must match a Dockerfile `FROM` host).
    pub registry: String,
    /// User name.
    pub username: String,
    /// Password or token.
    pub password: SecretString,
}

/// One build secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BuildSecret {
    /// The id `RUN --mount=type=secret,id=ID` names.
    pub id: String,
    /// The value.
    pub value: SecretString,
    /// Where the client read it (`env`, `file`); informational, the value is what counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// `build_secrets`: a list of `{id, value}` (sent by the clients), or an object
/// `{"ID": "value"}` / `{"ID": {"value": "..."}}`. Serialised as the list.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, ToSchema)]
#[serde(transparent)]
pub struct BuildSecrets(pub Vec<BuildSecret>);

impl<'de> Deserialize<'de> for BuildSecrets {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<BuildSecrets, D::Error> {
        deserializer.deserialize_any(BuildSecretsVisitor)
    }
}

struct BuildSecretsVisitor;

impl<'de> Visitor<'de> for BuildSecretsVisitor {
    type Value = BuildSecrets;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a list of {id, value} or an object {id: value}")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<BuildSecrets, A::Error> {
        let mut secrets = Vec::new();
        while let Some(secret) = seq.next_element::<BuildSecret>()? {
            secrets.push(secret);
        }
        Ok(BuildSecrets(secrets))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<BuildSecrets, A::Error> {
        let mut secrets = Vec::new();
        while let Some(id) = map.next_key::<String>()? {
            let value = map.next_value::<SecretValue>()?;
            secrets.push(BuildSecret {
                id,
                value: value.0,
                source: None,
            });
        }
        Ok(BuildSecrets(secrets))
    }
}

/// A secret's value in the object form: a string or `{"value": "...", "source": "..."}`.
struct SecretValue(SecretString);

/// The object form of [`SecretValue`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretValueObject {
    value: SecretString,
    #[serde(default)]
    #[allow(dead_code)] // Accepted for the SDK's shape; the client resolved it already.
    source: Option<String>,
}

impl<'de> Deserialize<'de> for SecretValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<SecretValue, D::Error> {
        struct ValueVisitor;
        impl<'de> Visitor<'de> for ValueVisitor {
            type Value = SecretValue;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(
                    "a string value (env and file sources are resolved by the client), or {value}",
                )
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<SecretValue, E> {
                Ok(SecretValue(SecretString::new(v)))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<SecretValue, A::Error> {
                let object =
                    SecretValueObject::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(SecretValue(object.value))
            }
        }
        deserializer.deserialize_any(ValueVisitor)
    }
}

/// The kinds of [`ReadinessSpec`] (`port` is an alias of `tcp`, `url` of `http`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReadinessKind {
    /// Something listens on `port`.
    #[serde(alias = "port")]
    Tcp,
    /// A GET of `url` succeeds.
    #[serde(alias = "url")]
    Http,
    /// `path` exists.
    File,
    /// A process named `name` runs.
    Process,
    /// `timeout_ms` have passed.
    Timeout,
    /// `command` exits 0.
    Command,
}

/// A readiness check as requested (spec §3.5): `kind` with its own field, plus optional
/// `interval_ms`, `timeout_secs` (per attempt), `startup_grace_secs` and `retries`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(as = ReadinessRequest)]
#[serde(deny_unknown_fields)]
pub struct ReadinessSpec {
    /// Which check.
    pub kind: ReadinessKind,
    /// `tcp`: the port, 1-65535.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u64>,
    /// `http`: an `http://` URL on localhost, 127.0.0.1 or 0.0.0.0 with an explicit port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// `file`: an absolute path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// `process`: the process name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `timeout`: milliseconds to wait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// `command`: a shell command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// Milliseconds between attempts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_ms: Option<u64>,
    /// Seconds one attempt may take.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
    /// Seconds after start during which failures don't count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup_grace_secs: Option<u64>,
    /// Failures tolerated after the grace period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u64>,
}

impl ReadinessSpec {
    /// A check of `kind` with no fields set.
    pub fn new(kind: ReadinessKind) -> ReadinessSpec {
        ReadinessSpec {
            kind,
            port: None,
            url: None,
            path: None,
            name: None,
            timeout_ms: None,
            command: None,
            interval_ms: None,
            timeout_secs: None,
            startup_grace_secs: None,
            retries: None,
        }
    }
}

/// `retry` replacement tags: one tag or a list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum TagOrTags {
    /// One tag.
    One(String),
    /// Several.
    Many(Vec<String>),
}

impl TagOrTags {
    /// The tags, as a list.
    pub fn into_vec(self) -> Vec<String> {
        match self {
            TagOrTags::One(tag) => vec![tag],
            TagOrTags::Many(tags) => tags,
        }
    }
}

/// `POST /v1/templates/builds/{build_id}/retry`: fresh request-time values (stored ones are
/// never replayed) and optionally new tags.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(as = RetryRequest)]
#[serde(deny_unknown_fields)]
pub struct RetryBody {
    /// Replacement tags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<TagOrTags>,
    /// Base-image credentials (required when the original build used some).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_image_auth: Option<BaseImageAuth>,
    /// Build secrets (the same ids as the original build).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_secrets: Option<BuildSecrets>,
    /// Registry credentials (required when the original build used some).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry_auth: Option<Vec<RegistryAuth>>,
}

/// `POST /v1/templates/builds/{build_id}/cancel`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelBody {
    /// Why (recorded in the log).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `POST /v1/templates/builds/{build_id}/promote`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PromoteBody {
    /// The tag to point at the build.
    pub tag: String,
}

/// `POST /v1/templates/{template}/tags`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AssignTagBody {
    /// The tag.
    pub tag: String,
    /// A ready build of this template.
    pub build_id: String,
}

/// `POST /v1/templates/{template}/rename`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RenameBody {
    /// The new name.
    pub name: String,
}

/// `POST /v1/templates/{template}/aliases`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AliasBody {
    /// The alias.
    pub alias: String,
}

/// `POST /v1/templates/build-context/blobs/missing`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MissingBlobsBody {
    /// `sha256:` digests of the files the client has.
    pub digests: Vec<String>,
}
