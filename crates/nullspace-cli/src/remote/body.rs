//! The request body of `template build --background`, `validate` and `plan`: the build flags
//! as the API's [`BuildRequestBody`], with the local build context scanned beside it.

use anyhow::Context;
use nullspace_api::request::{
    AuthKind, BaseImageAuth, BaseKind, BaseSpec, BuildSecret, BuildSecrets,
};
use nullspace_api::{BuildRequestBody, ContextEntry, SecretString, UploadStatus};
use nullspace_client::{Client, LocalContext};
use nullspace_oci::Credentials;
use serde_json::Value;

use crate::args::BuildArgs;

use super::error::RemoteError;

/// Marks the files of copies with `force_upload` (from `--copy-items`) as forced uploads.
fn mark_forced(context: &mut LocalContext, steps: &[nullspace_build::declarative::Step]) {
    use nullspace_build::declarative::Step;
    let forced: Vec<&str> = steps
        .iter()
        .flat_map(|step| match step {
            Step::Copy(item) => std::slice::from_ref(item),
            Step::CopyItems { items } => items.as_slice(),
            _ => &[],
        })
        .filter(|item| item.force_upload)
        .map(|item| item.src.as_str())
        .collect();
    for entry in &mut context.manifest.entries {
        if let ContextEntry::File {
            path,
            upload,
            reason,
            ..
        } = entry
        {
            let under =
                |src: &str| src == "." || path == src || path.starts_with(&format!("{src}/"));
            if forced.iter().any(|src| under(src)) {
                *upload = UploadStatus::Forced;
                *reason = Some("force_upload".into());
            }
        }
    }
}

/// `--build-secret-env ID=VAR` and `--build-secret-file ID=PATH` as the API's `[{id, value}]`,
/// read here.
pub(crate) fn build_secrets(
    from_env: &[String],
    from_file: &[String],
) -> anyhow::Result<BuildSecrets> {
    Ok(BuildSecrets(
        crate::dockerfile_cmd::resolve_secrets(from_env, from_file)?
            .into_iter()
            .map(|(id, value)| BuildSecret {
                id,
                value: SecretString::new(String::from_utf8_lossy(value.expose())),
                source: None,
            })
            .collect(),
    ))
}

/// The request `template build --dry-run` shows: the body as it would be sent (the build
/// context described, nothing uploaded) with every secret value replaced by `<redacted>`.
pub fn dry_run_body(args: BuildArgs) -> anyhow::Result<Value> {
    let mut body = build_body(args)?.into_body();
    if let Some(auth) = &mut body.base_image_auth {
        auth.redact();
    }
    for secret in body.build_secrets.iter_mut().flat_map(|s| s.0.iter_mut()) {
        secret.value.redact();
    }
    Ok(serde_json::to_value(&body)?)
}

/// A request body and the local build context it reads (uploaded before it is sent).
pub(crate) struct RequestBody {
    body: BuildRequestBody,
    context: Option<LocalContext>,
    named_contexts: Vec<(String, LocalContext)>,
    skip_cache: bool,
}

impl RequestBody {
    /// The body with the contexts' manifests in it (`build_context`, `build_contexts`).
    fn into_body(self) -> BuildRequestBody {
        let RequestBody {
            mut body,
            context,
            named_contexts,
            ..
        } = self;
        body.build_context = context.map(|c| c.manifest);
        if !named_contexts.is_empty() {
            body.build_contexts = Some(
                named_contexts
                    .into_iter()
                    .map(|(name, c)| (name, c.manifest))
                    .collect(),
            );
        }
        body
    }
}

/// The base selector of the build flags, if any.
fn base_spec(b: crate::args::BaseArgs) -> Option<BaseSpec> {
    let (kind, value) = if let Some(v) = b.from_ubuntu_image {
        (BaseKind::UbuntuImage, Some(v))
    } else if let Some(v) = b.from_debian_image {
        (BaseKind::DebianImage, (!v.is_empty()).then_some(v))
    } else if let Some(v) = b.from_python_image {
        (BaseKind::PythonImage, Some(v))
    } else if let Some(v) = b.from_node_image {
        (BaseKind::NodeImage, Some(v))
    } else if let Some(v) = b.from_bun_image {
        (BaseKind::BunImage, Some(v))
    } else if let Some(r) = b.from_image {
        (BaseKind::Image, Some(r))
    } else if let Some(r) = b.from_base_image {
        (BaseKind::BaseImage, Some(r))
    } else if let Some(r) = b.from_template {
        (BaseKind::Template, Some(r))
    } else {
        return None;
    };
    Some(BaseSpec { kind, value })
}

/// The `base_image_auth` of the credential flags.
pub(crate) fn base_image_auth(credentials: Credentials) -> anyhow::Result<Option<BaseImageAuth>> {
    Ok(match credentials {
        Credentials::Anonymous => None,
        Credentials::Basic { username, password } => Some(BaseImageAuth {
            kind: Some(AuthKind::Basic),
            username: Some(username),
            password: Some(SecretString::new(password)),
            ..BaseImageAuth::default()
        }),
        Credentials::Gcp {
            service_account_json,
        } => Some(BaseImageAuth {
            kind: Some(AuthKind::Gcp),
            service_account_json: Some(SecretString::new(service_account_json)),
            ..BaseImageAuth::default()
        }),
        Credentials::Ecr {
            access_key_id,
            secret_access_key,
            session_token,
            region,
            endpoint,
        } => {
            if session_token.is_some() || endpoint.is_some() {
                return Err(RemoteError::new(
                    "invalid_request",
                    "--aws-session-token and --aws-ecr-endpoint are not supported with --background",
                )
                .into());
            }
            Some(BaseImageAuth {
                kind: Some(AuthKind::Ecr),
                access_key_id: Some(access_key_id),
                secret_access_key: Some(SecretString::new(secret_access_key)),
                region: (!region.is_empty()).then_some(region),
                ..BaseImageAuth::default()
            })
        }
        other => {
            return Err(RemoteError::new(
                "invalid_request",
                format!("{} credentials cannot be sent to the service", other.kind()),
            )
            .into())
        }
    })
}

/// The `POST /v1/templates/builds` body for `template build --background` (also `validate`
/// and `plan`): the base, steps (copies read the current directory), the Dockerfile with its
/// folder as the context, secrets and options.
pub(crate) fn build_body(mut args: BuildArgs) -> anyhow::Result<RequestBody> {
    let credentials = crate::base_image_credentials(&mut args)?;
    let mut body = BuildRequestBody::default();
    let mut context = None;
    let mut named_contexts = Vec::new();
    if let Some(path) = args.base.from_dockerfile.take() {
        for item in &args.dockerfile.build_context {
            let (name, dir) = item.split_once('=').ok_or_else(|| {
                RemoteError::new(
                    "invalid_request",
                    format!("--build-context {item:?}: expected NAME=DIR"),
                )
            })?;
            let scanned = LocalContext::scan_tree(std::path::Path::new(dir))?;
            named_contexts.push((name.to_string(), scanned));
        }
        let content = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let root = match args.dockerfile.context.take() {
            Some(dir) => dir,
            None => path
                .canonicalize()
                .with_context(|| format!("reading {}", path.display()))?
                .parent()
                .map(std::path::Path::to_path_buf)
                .unwrap_or_default(),
        };
        context = Some(LocalContext::scan_tree(&root)?);
        body.dockerfile = Some(content);
        let secrets = build_secrets(
            &args.dockerfile.build_secret_env,
            &args.dockerfile.build_secret_file,
        )?;
        if !secrets.0.is_empty() {
            body.build_secrets = Some(secrets);
        }
    } else {
        crate::dockerfile_cmd::reject_without_dockerfile(&args.dockerfile)?;
    }
    let mut steps = std::mem::take(&mut args.steps.steps);
    if !steps.is_empty() {
        let root = std::env::current_dir().context("reading the current directory")?;
        crate::steps_cmd::relative_copy_sources(&mut steps, &root)?;
        let sources: Vec<String> = nullspace_build::declarative::copy_sources(&steps)
            .into_iter()
            .map(|(_, src)| src)
            .collect();
        if !sources.is_empty() {
            let mut scanned = LocalContext::scan_paths(&root, &sources)?;
            mark_forced(&mut scanned, &steps);
            context = Some(scanned);
        }
        body.steps = Some(steps);
    }
    body.start_cmd = args.steps.start_cmd.take();
    body.no_start_cmd = args.steps.no_start_cmd.then_some(true);
    body.readiness = crate::steps_cmd::readiness_request(&args.steps);
    body.name = Some(args.name);
    body.base = base_spec(args.base);
    body.tags = (!args.tags.is_empty()).then_some(args.tags);
    body.disk_mb = args.disk_mb;
    body.cpu_count = args.cpu_count;
    body.memory_mb = args.memory_mb;
    body.internet_access = args.no_internet_access.then_some(false);
    body.skip_cache = args.skip_cache.then_some(true);
    body.build_backend = args
        .backend
        .as_deref()
        .map(str::parse)
        .transpose()
        .map_err(|e: String| RemoteError::new("invalid_request", format!("--backend: {e}")))?;
    body.base_image_auth = base_image_auth(credentials)?;
    Ok(RequestBody {
        body,
        context,
        named_contexts,
        skip_cache: args.skip_cache,
    })
}

impl RequestBody {
    /// The body, with its build context uploaded when `upload` (only the blobs the server
    /// lacks; all of them with `--skip-cache`) and described either way.
    pub(crate) async fn prepare(
        mut self,
        client: &Client,
        upload: bool,
    ) -> anyhow::Result<BuildRequestBody> {
        if upload {
            let skip_cache = self.skip_cache;
            let named = self.named_contexts.iter_mut().map(|(_, c)| c);
            for context in self.context.iter_mut().chain(named) {
                client.upload_context(context, skip_cache).await?;
            }
        }
        Ok(self.into_body())
    }
}
