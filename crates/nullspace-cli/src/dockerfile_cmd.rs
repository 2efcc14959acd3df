//! `nullspace template build --from-dockerfile PATH`: the Dockerfile flags, resolved on this
//! side (secrets from env vars and files) into a [`DockerfileSpec`] built by BuildKit.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;

use nullspace_build::dockerfile::{
    BuildBackend, DockerfileSource, DockerfileSpec, SecretSource, SecretValue,
};
use nullspace_build::{BuildError, BuildOutcome, BuildRequest, Engine, EventSink};
use nullspace_oci::Credentials;

/// Flags of Dockerfile builds (only with `--from-dockerfile`).
#[derive(Debug, Args)]
pub struct DockerfileArgs {
    /// Build context for --from-dockerfile (default: the Dockerfile's folder); its
    /// `.dockerignore` applies.
    #[arg(long, value_name = "DIR")]
    pub context: Option<PathBuf>,
    /// A build secret read from an environment variable; repeatable.
    #[arg(long = "build-secret-env", value_name = "ID=ENVVAR")]
    pub build_secret_env: Vec<String>,
    /// A build secret read from a file; repeatable.
    #[arg(long = "build-secret-file", value_name = "ID=PATH")]
    pub build_secret_file: Vec<String>,
    /// A named context (`FROM NAME`, `COPY --from=NAME`); repeatable.
    #[arg(long = "build-context", value_name = "NAME=DIR")]
    pub build_context: Vec<String>,
}

fn pair<'a>(flag: &str, value: &'a str) -> anyhow::Result<(&'a str, &'a str)> {
    value
        .split_once('=')
        .filter(|(k, v)| !k.is_empty() && !v.is_empty())
        .ok_or_else(|| {
            BuildError::InvalidRequest {
                field: flag.into(),
                message: format!("{value:?}: expected KEY=VALUE"),
            }
            .into()
        })
}

/// Rejects Dockerfile flags given without `--from-dockerfile` (usage error, exit 2).
pub fn reject_without_dockerfile(args: &DockerfileArgs) -> anyhow::Result<()> {
    let given = [
        ("--context", args.context.is_some()),
        ("--build-secret-env", !args.build_secret_env.is_empty()),
        ("--build-secret-file", !args.build_secret_file.is_empty()),
        ("--build-context", !args.build_context.is_empty()),
    ];
    match given.iter().find(|(_, set)| *set) {
        Some((flag, _)) => Err(BuildError::InvalidRequest {
            field: (*flag).into(),
            message: "only applies to --from-dockerfile builds".into(),
        }
        .into()),
        None => Ok(()),
    }
}

/// `--build-secret-env ID=VAR` and `--build-secret-file ID=PATH`, read here (the errors name
/// the id and the variable or file, never a value).
pub fn resolve_secrets(
    from_env: &[String],
    from_file: &[String],
) -> anyhow::Result<BTreeMap<String, SecretValue>> {
    let mut secrets = BTreeMap::new();
    for item in from_env {
        let (id, env) = pair("--build-secret-env", item)?;
        let source = SecretSource::Env { env: env.into() };
        secrets.insert(id.to_string(), source.resolve(id)?);
    }
    for item in from_file {
        let (id, path) = pair("--build-secret-file", item)?;
        let source = SecretSource::File { path: path.into() };
        secrets.insert(id.to_string(), source.resolve(id)?);
    }
    Ok(secrets)
}

/// Resolves the flags into a spec (secret values read here, never echoed).
pub fn spec(
    dockerfile: PathBuf,
    args: DockerfileArgs,
    backend: Option<&str>,
) -> anyhow::Result<DockerfileSpec> {
    let mut spec = DockerfileSpec::new(DockerfileSource::Path(dockerfile));
    spec.context_dir = args.context;
    spec.build_backend = match backend {
        Some("native") => Some(BuildBackend::Native),
        Some(_) => Some(BuildBackend::Buildkit),
        None => None,
    };
    spec.build_secrets = resolve_secrets(&args.build_secret_env, &args.build_secret_file)?;
    for item in &args.build_context {
        let (name, dir) = pair("--build-context", item)?;
        spec.named_contexts.insert(name.into(), dir.into());
    }
    Ok(spec)
}

/// Builds `spec` with the environment's BuildKit.
pub async fn build(
    engine: &Engine,
    request: &BuildRequest,
    spec: &DockerfileSpec,
    credentials: &Credentials,
    sink: Arc<dyn EventSink>,
) -> Result<BuildOutcome, BuildError> {
    engine
        .build_dockerfile(request, spec, credentials, sink)
        .await
}
