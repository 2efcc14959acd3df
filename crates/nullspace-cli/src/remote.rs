//! Client mode: with `NULLSPACE_API_URL` set, the build-lifecycle subcommands (and
//! `template build --background`) talk to a `nullspace serve` instance over its HTTP API.

use std::process::ExitCode;
use std::time::Duration;

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context;
use futures_util::StreamExt as _;
use nullspace_api::request::{
    AuthKind, BaseImageAuth, BaseKind, BaseSpec, BuildSecret, BuildSecrets, RetryBody, TagOrTags,
};
use nullspace_api::{BuildRequestBody, SecretString};
use nullspace_build::context::{ContextEntry, LocalContext, UploadStatus};
use nullspace_oci::Credentials;
use serde_json::{json, Value};

use crate::args::{BuildArgs, Cli, Command, TemplateCommand};

/// The server's base URL.
const URL_ENV: &str = "NULLSPACE_API_URL";
/// The API key sent as `Authorization: Bearer`.
const KEY_ENV: &str = "NULLSPACE_API_KEY";

/// An error envelope from the server (`{error, code, ...}`), or one shaped like it.
#[derive(Debug)]
pub struct RemoteError {
    /// Stable machine code (`invalid_request`, `template_build_not_found`, ...).
    pub code: String,
    /// Readable message.
    pub message: String,
    /// The whole envelope, printed with `--json`.
    pub envelope: Value,
}

impl std::fmt::Display for RemoteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}

impl std::error::Error for RemoteError {}

impl RemoteError {
    fn new(code: &str, message: impl Into<String>) -> RemoteError {
        let message = message.into();
        RemoteError {
            envelope: json!({ "error": message, "code": code }),
            code: code.to_string(),
            message,
        }
    }

    /// The exit code for the error code (the same mapping as local errors).
    pub fn exit_code(&self) -> u8 {
        match self.code.as_str() {
            "invalid_request" => 2,
            c if c.ends_with("_not_found") => 3,
            "unauthorized" | "authentication_failed" => 4,
            c if c.ends_with("_permission_denied") => 5,
            c if c == "file_upload_limit_exceeded"
                || c.contains("quota")
                || c.contains("rate_limit") =>
            {
                6
            }
            c if c == "conflict" || c.ends_with("_conflict") || c == "rebuild_required" => 7,
            _ => 1,
        }
    }

    /// Prints the error (the envelope with `--json`) and returns the exit code.
    pub fn report(&self, json_output: bool) -> ExitCode {
        if json_output {
            println!("{}", self.envelope);
        } else {
            eprintln!("error: {self}");
            if let Some(detail) = self.envelope.get("error_detail").filter(|d| !d.is_null()) {
                eprintln!("  detail: {detail}");
            }
        }
        ExitCode::from(self.exit_code())
    }
}

/// The error for a server-only subcommand run without `NULLSPACE_API_URL`.
pub fn needs_server() -> anyhow::Error {
    RemoteError::new(
        "invalid_request",
        format!(
            "this command needs a build server: set {URL_ENV} (and {KEY_ENV}) to a `nullspace serve` URL"
        ),
    )
    .into()
}

/// Whether `cli` is a client-mode command.
pub fn handles(cli: &Cli) -> bool {
    match &cli.command {
        Command::Template(TemplateCommand::Build(args)) => args.background,
        Command::Template(
            TemplateCommand::Status { .. }
            | TemplateCommand::Logs { .. }
            | TemplateCommand::Wait { .. }
            | TemplateCommand::Cancel { .. }
            | TemplateCommand::Promote { .. }
            | TemplateCommand::Retry { .. }
            | TemplateCommand::Validate(_)
            | TemplateCommand::Plan(_),
        ) => true,
        Command::Template(TemplateCommand::Rename { .. }) => {
            std::env::var(URL_ENV).is_ok_and(|url| !url.trim().is_empty())
        }
        _ => false,
    }
}

/// Runs a client-mode command (see [`handles`]).
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let base = match std::env::var(URL_ENV) {
        Ok(url) if !url.trim().is_empty() => url.trim().trim_end_matches('/').to_string(),
        _ => return Err(needs_server()),
    };
    let client = Client {
        http: reqwest::Client::new(),
        base,
        key: std::env::var(KEY_ENV).ok().filter(|k| !k.is_empty()),
    };
    let json_output = cli.json;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        match cli.command {
            Command::Template(TemplateCommand::Build(args)) => {
                let body = client.prepare(build_body(*args)?, true).await?;
                let build = client
                    .call(reqwest::Method::POST, "/v1/templates/builds", Some(body))
                    .await?;
                if json_output {
                    println!("{}", serde_json::to_string_pretty(&build)?);
                } else {
                    println!("{}", text(&build["build_id"]));
                }
                Ok(ExitCode::SUCCESS)
            }
            Command::Template(TemplateCommand::Status { build_id, offset }) => {
                let status = client.status(&build_id, offset).await?;
                if json_output {
                    println!("{}", serde_json::to_string_pretty(&status)?);
                } else {
                    let build = &status["build"];
                    println!("{}\t{}", text(&build["build_id"]), text(&build["status"]));
                    for entry in status["entries"].as_array().into_iter().flatten() {
                        println!("{}", entry_line(entry));
                    }
                    println!("next_offset {}", status["next_offset"]);
                }
                Ok(ExitCode::SUCCESS)
            }
            Command::Template(TemplateCommand::Logs {
                build_id,
                offset,
                follow,
            }) => {
                client.logs(&build_id, offset, follow, json_output).await?;
                Ok(ExitCode::SUCCESS)
            }
            Command::Template(TemplateCommand::Wait {
                build_id,
                poll_interval_ms,
            }) => client.wait(&build_id, poll_interval_ms, json_output).await,
            Command::Template(TemplateCommand::Cancel { build_id, reason }) => {
                let body = match reason {
                    Some(reason) => json!({ "reason": reason }),
                    None => json!({}),
                };
                let path = format!("/v1/templates/builds/{}/cancel", segment(&build_id));
                let out = client
                    .call(reqwest::Method::POST, &path, Some(body))
                    .await?;
                if json_output {
                    println!("{}", serde_json::to_string_pretty(&out)?);
                } else {
                    println!(
                        "{}\t{}",
                        text(&out["build"]["build_id"]),
                        text(&out["build"]["status"])
                    );
                }
                Ok(ExitCode::SUCCESS)
            }
            Command::Template(TemplateCommand::Promote { build_id, tag }) => {
                let path = format!("/v1/templates/builds/{}/promote", segment(&build_id));
                let out = client
                    .call(reqwest::Method::POST, &path, Some(json!({ "tag": tag })))
                    .await?;
                if json_output {
                    println!("{}", serde_json::to_string_pretty(&out)?);
                } else {
                    let target = out
                        .get("canonical_ref")
                        .map(text)
                        .unwrap_or_else(|| tag.clone());
                    println!("promoted {build_id} to {target}");
                }
                Ok(ExitCode::SUCCESS)
            }
            Command::Template(TemplateCommand::Retry {
                build_id,
                tags,
                username,
                password_env,
                build_secret_env,
                build_secret_file,
            }) => {
                let mut body = RetryBody::default();
                let secrets = build_secrets(&build_secret_env, &build_secret_file)?;
                if !secrets.0.is_empty() {
                    body.build_secrets = Some(secrets);
                }
                if !tags.is_empty() {
                    body.tags = Some(TagOrTags::Many(tags));
                }
                if let (Some(username), Some(variable)) = (username, password_env) {
                    let password = std::env::var(&variable).map_err(|_| {
                        RemoteError::new(
                            "invalid_request",
                            format!("--password-env: ${variable} is not set"),
                        )
                    })?;
                    body.base_image_auth = base_image_auth(Credentials::basic(username, password))?;
                }
                let path = format!("/v1/templates/builds/{}/retry", segment(&build_id));
                let build = client
                    .call(
                        reqwest::Method::POST,
                        &path,
                        Some(serde_json::to_value(&body)?),
                    )
                    .await?;
                if json_output {
                    println!("{}", serde_json::to_string_pretty(&build)?);
                } else {
                    println!("{}", text(&build["build_id"]));
                }
                Ok(ExitCode::SUCCESS)
            }
            Command::Template(TemplateCommand::Validate(args)) => {
                let body = client.prepare(build_body(*args)?, false).await?;
                let out = client
                    .call(reqwest::Method::POST, "/v1/templates/validate", Some(body))
                    .await?;
                let valid = out["valid"].as_bool() == Some(true);
                if json_output {
                    println!("{}", serde_json::to_string_pretty(&out)?);
                } else {
                    println!("{}", if valid { "valid" } else { "invalid" });
                    for error in out["errors"].as_array().into_iter().flatten() {
                        println!(
                            "error {}: {}",
                            text(&error["code"]),
                            text(&error["message"])
                        );
                    }
                    for warning in out["warnings"].as_array().into_iter().flatten() {
                        println!("warning: {}", text(warning));
                    }
                }
                Ok(if valid {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(2)
                })
            }
            Command::Template(TemplateCommand::Plan(args)) => {
                let body = client.prepare(build_body(*args)?, false).await?;
                let out = client
                    .call(reqwest::Method::POST, "/v1/templates/plan", Some(body))
                    .await?;
                if json_output {
                    println!("{}", serde_json::to_string_pretty(&out)?);
                } else {
                    let plan = &out["build_plan"];
                    for key in [
                        "name",
                        "source_kind",
                        "build_backend",
                        "base_image",
                        "base_template",
                    ] {
                        if !plan[key].is_null() {
                            println!("{key}: {}", text(&plan[key]));
                        }
                    }
                    if let Some(dockerfile) = plan["dockerfile"].as_str() {
                        println!("dockerfile:\n{dockerfile}");
                    }
                    for warning in out["warnings"].as_array().into_iter().flatten() {
                        println!("warning: {}", text(warning));
                    }
                }
                Ok(ExitCode::SUCCESS)
            }
            Command::Template(TemplateCommand::Rename {
                reference,
                new_name,
            }) => {
                let path = format!("/v1/templates/{}/rename", segment(&reference));
                let out = client
                    .call(
                        reqwest::Method::POST,
                        &path,
                        Some(json!({ "name": new_name })),
                    )
                    .await?;
                if json_output {
                    println!("{}", serde_json::to_string_pretty(&out)?);
                } else {
                    println!("renamed {reference} to {}", text(&out["name"]));
                }
                Ok(ExitCode::SUCCESS)
            }
            _ => Err(needs_server()),
        }
    })
}

/// A string value without quotes (other values as JSON).
fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// One log entry as a line: `[offset] kind level: message`.
fn entry_line(entry: &Value) -> String {
    let mut line = format!(
        "[{}] {} {}: {}",
        entry["offset"],
        text(&entry["kind"]),
        text(&entry["level"]),
        text(&entry["message"])
    );
    if let Some(detail) = entry.get("error_detail").filter(|d| !d.is_null()) {
        line.push_str(&format!(" ({detail})"));
    }
    line
}

/// A build id as a URL path segment (ids are `tb_` + alphanumerics; anything else is escaped).
fn segment(id: &str) -> String {
    id.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

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
fn build_secrets(from_env: &[String], from_file: &[String]) -> anyhow::Result<BuildSecrets> {
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
struct RequestBody {
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
fn base_image_auth(credentials: Credentials) -> anyhow::Result<Option<BaseImageAuth>> {
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
fn build_body(mut args: BuildArgs) -> anyhow::Result<RequestBody> {
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

/// The HTTP client.
struct Client {
    http: reqwest::Client,
    base: String,
    key: Option<String>,
}

impl Client {
    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let request = self.http.request(method, format!("{}{path}", self.base));
        match &self.key {
            Some(key) => request.bearer_auth(key),
            None => request,
        }
    }

    /// Sends the request; a non-2xx answer becomes a [`RemoteError`] from its envelope.
    async fn send(&self, request: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        let response = request
            .send()
            .await
            .with_context(|| format!("connecting to the build server at {}", self.base))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body = response.text().await.unwrap_or_default();
        let envelope: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        let code = envelope["code"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| {
                match status.as_u16() {
                    401 => "unauthorized",
                    404 => "not_found",
                    409 => "conflict",
                    400 => "invalid_request",
                    _ => "error",
                }
                .to_string()
            });
        let message = envelope["error"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| format!("the server answered {status}: {body}"));
        let envelope = if envelope.is_object() {
            envelope
        } else {
            json!({ "error": message, "code": code })
        };
        Err(RemoteError {
            code,
            message,
            envelope,
        }
        .into())
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let mut request = self.request(method, path);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = self.send(request).await?;
        response
            .json()
            .await
            .context("reading the build server's answer")
    }

    /// The request body, with its build context uploaded when `upload` (only the blobs the
    /// server lacks; all of them with `--skip-cache`) and described either way.
    async fn prepare(&self, mut request: RequestBody, upload: bool) -> anyhow::Result<Value> {
        if upload {
            let skip_cache = request.skip_cache;
            let named = request.named_contexts.iter_mut().map(|(_, c)| c);
            for context in request.context.iter_mut().chain(named) {
                self.upload_context(context, skip_cache).await?;
            }
        }
        Ok(serde_json::to_value(request.into_body())?)
    }

    /// Asks which blobs the server lacks and uploads them (every one with `skip_cache`),
    /// recording in the manifest how each reached the server.
    async fn upload_context(
        &self,
        context: &mut LocalContext,
        skip_cache: bool,
    ) -> anyhow::Result<()> {
        let digests: Vec<String> = context
            .manifest
            .file_digests()
            .into_iter()
            .map(str::to_string)
            .collect();
        let mut missing = std::collections::HashSet::new();
        for chunk in digests.chunks(50_000) {
            let answer = self
                .call(
                    reqwest::Method::POST,
                    "/v1/templates/build-context/blobs/missing",
                    Some(json!({ "digests": chunk })),
                )
                .await?;
            for digest in answer["missing"].as_array().into_iter().flatten() {
                if let Some(d) = digest.as_str() {
                    missing.insert(d.to_string());
                }
            }
        }
        // Decide per file, then send each needed blob once, 8 at a time.
        let mut to_send: BTreeMap<String, PathBuf> = BTreeMap::new();
        for entry in &mut context.manifest.entries {
            let ContextEntry::File {
                path,
                digest,
                upload,
                reason,
                ..
            } = entry
            else {
                continue;
            };
            let forced = *upload == UploadStatus::Forced;
            let needed = skip_cache || forced || missing.contains(digest.as_str());
            if needed {
                let local = context
                    .files
                    .get(path.as_str())
                    .ok_or_else(|| anyhow::anyhow!("{path}: not in the scanned context"))?;
                to_send
                    .entry(digest.clone())
                    .or_insert_with(|| local.clone());
            }
            (*upload, *reason) = match (skip_cache, forced, needed) {
                (true, _, _) => (UploadStatus::Forced, Some("whole_build_skip_cache".into())),
                (false, true, _) => (UploadStatus::Forced, Some("force_upload".into())),
                (false, false, true) => (UploadStatus::Uploaded, None),
                (false, false, false) => (UploadStatus::Reused, None),
            };
        }
        let uploads = to_send.into_iter().map(|(digest, local)| async move {
            let file = tokio::fs::File::open(&local)
                .await
                .with_context(|| format!("reading {}", local.display()))?;
            let request = self
                .request(
                    reqwest::Method::PUT,
                    &format!("/v1/templates/build-context/blobs/{digest}"),
                )
                .header("content-type", "application/octet-stream")
                .body(reqwest::Body::from(file));
            self.send(request)
                .await
                .with_context(|| format!("uploading {} ({digest})", local.display()))?;
            anyhow::Ok(())
        });
        let mut uploads = futures_util::stream::iter(uploads).buffer_unordered(8);
        while let Some(result) = uploads.next().await {
            result?;
        }
        Ok(())
    }

    /// `GET /v1/templates/builds/{id}?offset=`: `{build, entries, next_offset}`.
    async fn status(&self, build_id: &str, offset: u64) -> anyhow::Result<Value> {
        let path = format!("/v1/templates/builds/{}?offset={offset}", segment(build_id));
        self.call(reqwest::Method::GET, &path, None).await
    }

    /// Polls until the build is terminal, printing new entries on stderr as they come.
    async fn wait(
        &self,
        build_id: &str,
        poll_interval_ms: u64,
        json_output: bool,
    ) -> anyhow::Result<ExitCode> {
        let mut offset = 0;
        loop {
            let status = self.status(build_id, offset).await?;
            if !json_output {
                for entry in status["entries"].as_array().into_iter().flatten() {
                    eprintln!("{}", entry_line(entry));
                }
            }
            offset = status["next_offset"].as_u64().unwrap_or(offset);
            let build = &status["build"];
            let state = build["status"].as_str().unwrap_or_default();
            if matches!(state, "ready" | "error" | "cancelled") {
                if json_output {
                    println!("{}", serde_json::to_string_pretty(build)?);
                } else {
                    println!("{}\t{state}", text(&build["build_id"]));
                    if state != "ready" {
                        match build.get("error_detail").filter(|d| !d.is_null()) {
                            Some(detail) => eprintln!(
                                "error: build {state} in {}: {}",
                                text(&detail["phase"]),
                                text(&detail["message"])
                            ),
                            None => eprintln!("error: build {state}"),
                        }
                    }
                }
                return Ok(if state == "ready" {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                });
            }
            tokio::time::sleep(Duration::from_millis(poll_interval_ms.max(10))).await;
        }
    }

    /// Reads the SSE log stream, printing each entry (one JSON object a line with `--json`).
    async fn logs(
        &self,
        build_id: &str,
        offset: u64,
        follow: bool,
        json_output: bool,
    ) -> anyhow::Result<()> {
        let path = format!(
            "/v1/templates/builds/{}/logs?offset={offset}&follow={follow}",
            segment(build_id)
        );
        let request = self
            .request(reqwest::Method::GET, &path)
            .header(reqwest::header::ACCEPT, "text/event-stream");
        let mut response = self.send(request).await?;
        let mut pending: Vec<u8> = Vec::new();
        let mut frame = Frame::default();
        while let Some(chunk) = response
            .chunk()
            .await
            .context("reading the build's log stream")?
        {
            pending.extend_from_slice(&chunk);
            while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                let line = String::from_utf8_lossy(&line);
                let line = line.trim_end_matches(['\n', '\r']);
                if let Some(data) = frame.feed(line) {
                    print_entry(&data, json_output)?;
                }
            }
        }
        if let Some(data) = frame.feed("") {
            print_entry(&data, json_output)?;
        }
        Ok(())
    }
}

fn print_entry(data: &str, json_output: bool) -> anyhow::Result<()> {
    let entry: Value = serde_json::from_str(data).context("parsing a log entry")?;
    if json_output {
        println!("{entry}");
    } else {
        println!("{}", entry_line(&entry));
    }
    Ok(())
}

/// An SSE frame being assembled from `id:`, `event:` and `data:` lines.
#[derive(Default)]
struct Frame {
    event: Option<String>,
    data: Vec<String>,
}

impl Frame {
    /// Takes one line; returns the data of a completed `log` frame.
    fn feed(&mut self, line: &str) -> Option<String> {
        if line.is_empty() {
            let event = self.event.take();
            let data = std::mem::take(&mut self.data);
            if data.is_empty() || event.as_deref().is_some_and(|e| e != "log") {
                return None;
            }
            return Some(data.join("\n"));
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => self.event = Some(value.to_string()),
            "data" => self.data.push(value.to_string()),
            _ => {} // `id:` (the offset is in the entry too) and `retry:`.
        }
        None
    }
}
