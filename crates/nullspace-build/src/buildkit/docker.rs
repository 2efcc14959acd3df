//! The Docker Engine driver: `docker buildx build` against the Engine's embedded BuildKit.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use tokio::io::AsyncReadExt;
use tokio::process::Command;
use tokio::sync::OnceCell;

use super::progress::{ProgressFormat, ProgressParser};
use super::{BuildkitDriver, BuildkitError, BuildkitInfo, BuildkitJob, Compression};
use crate::events::{BuildEvent, EventSink};

/// How to reach Docker's BuildKit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DockerBuildxConfig {
    /// The docker CLI (`NULLSPACE_DOCKER`, else `docker` on `PATH`).
    pub docker: PathBuf,
    /// `DOCKER_HOST` for the client; `None` keeps the client's own choice.
    pub docker_host: Option<String>,
    /// The client's config dir (`DOCKER_CONFIG`, else `~/.docker`): its `cli-plugins/` holds
    /// buildx.
    pub docker_config: Option<PathBuf>,
    /// Builder instance (`NULLSPACE_BUILDX_BUILDER`); `None` = the client's current one.
    pub builder: Option<String>,
    /// Progress output to request.
    pub progress: ProgressFormat,
}

impl Default for DockerBuildxConfig {
    /// `docker` on `PATH` with its own defaults (host, config, current builder).
    fn default() -> DockerBuildxConfig {
        DockerBuildxConfig {
            docker: PathBuf::from("docker"),
            docker_host: None,
            docker_config: None,
            builder: None,
            progress: ProgressFormat::RawJson,
        }
    }
}

/// `docker buildx build` with the docker driver (Docker Engine ≥ 23 with the containerd image
/// store, for `--output type=oci`).
pub struct DockerBuildx {
    config: DockerBuildxConfig,
    info: OnceCell<BuildkitInfo>,
}

/// The only variables of the server's environment a `docker` client inherits: what it
/// needs to run (`PATH` finds nothing of the tenant's; `HOME` and `TMPDIR` locate its own
/// files). Everything else is set explicitly ([`DockerBuildxConfig`]).
pub const INHERITED_ENV: &[&str] = &["PATH", "HOME", "TMPDIR", "LANG", "SSH_AUTH_SOCK"];

/// Probe used to learn whether the built-in frontend has heredocs (no `# syntax=`: that would
/// pull a frontend image).
const HEREDOC_PROBE: &str = "FROM scratch\nCOPY <<EOF /probe\nx\nEOF\n";

impl DockerBuildx {
    /// A driver with `config`; nothing runs until [`BuildkitDriver::detect`] or a build.
    pub fn new(config: DockerBuildxConfig) -> DockerBuildx {
        DockerBuildx {
            config,
            info: OnceCell::new(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &DockerBuildxConfig {
        &self.config
    }

    fn endpoint(&self) -> String {
        self.config
            .docker_host
            .clone()
            .unwrap_or_else(|| "unix:///var/run/docker.sock".to_string())
    }

    /// A `docker` command with a cleared environment: only [`INHERITED_ENV`] passes through,
    /// plus what we set. Nothing a tenant sends ever names a variable here (build envs travel
    /// in argv), so no request can set `LD_PRELOAD`, `PATH`, `DOCKER_HOST` and the like for
    /// the client. `docker_config` overrides the config dir.
    fn command(&self, docker_config: Option<&Path>) -> Command {
        let mut command = Command::new(&self.config.docker);
        command.env_clear();
        for name in INHERITED_ENV {
            if let Some(value) = std::env::var_os(name) {
                command.env(name, value);
            }
        }
        if let Some(host) = &self.config.docker_host {
            command.env("DOCKER_HOST", host);
        }
        match docker_config.or(self.config.docker_config.as_deref()) {
            Some(dir) => command.env("DOCKER_CONFIG", dir),
            None => command.env_remove("DOCKER_CONFIG"),
        };
        command
            .env("BUILDX_NO_DEFAULT_ATTESTATIONS", "1")
            .env("DOCKER_CLI_HINTS", "false")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        command
    }

    /// Runs a short client command, returning stdout; failures say what the client said.
    async fn output(&self, args: &[&str]) -> Result<String, BuildkitError> {
        let out = self
            .command(None)
            .args(args)
            .output()
            .await
            .map_err(|source| BuildkitError::Spawn {
                binary: self.config.docker.clone(),
                source,
            })?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            Ok(stdout)
        } else {
            let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
            Err(self.classify(&args.join(" "), stderr))
        }
    }

    fn classify(&self, what: &str, detail: String) -> BuildkitError {
        if detail.contains("Cannot connect to the Docker daemon")
            || detail.contains("connection refused")
            || detail.contains("no such file or directory") && detail.contains(".sock")
        {
            BuildkitError::Unreachable {
                endpoint: self.endpoint(),
                detail,
            }
        } else {
            BuildkitError::Unsupported {
                what: format!("docker {what}"),
                detail,
            }
        }
    }

    async fn probe(&self) -> Result<BuildkitInfo, BuildkitError> {
        let engine_version = self
            .output(&["version", "--format", "{{.Server.Version}}"])
            .await?
            .trim()
            .to_string();
        let client_version = self
            .output(&["buildx", "version"])
            .await
            .map_err(|e| match e {
                BuildkitError::Unsupported { detail, .. } => BuildkitError::Unsupported {
                    what: "the buildx plugin (docker buildx) is missing; put docker-buildx in $DOCKER_CONFIG/cli-plugins".into(),
                    detail,
                },
                other => other,
            })?
            .trim()
            .to_string();
        let mut inspect = vec!["buildx", "inspect"];
        if let Some(b) = &self.config.builder {
            inspect.push(b);
        }
        let text = self.output(&inspect).await?;
        let field = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_string()))
        };
        if let Some(error) = field("Error:") {
            return Err(self.classify("buildx inspect", error));
        }
        let builder = field("Name:").unwrap_or_else(|| "default".into());
        let buildkit_version = field("BuildKit version:")
            .or_else(|| field("Buildkit:"))
            .unwrap_or_else(|| "unknown".into());
        let heredocs = self.probe_heredocs().await?;
        Ok(BuildkitInfo {
            driver: "docker-buildx",
            binary: Some(self.config.docker.clone()),
            endpoint: self.endpoint(),
            engine_version: Some(engine_version).filter(|v| !v.is_empty()),
            builder,
            buildkit_version,
            client_version: Some(client_version),
            heredocs,
        })
    }

    async fn probe_heredocs(&self) -> Result<bool, BuildkitError> {
        // A fresh private directory (mode 0700, unpredictable name), never a fixed /tmp path
        // another local user could prepare.
        let temp = tempfile::Builder::new()
            .prefix("nullspace-heredoc-probe-")
            .tempdir()
            .map_err(|source| BuildkitError::Io {
                path: std::env::temp_dir(),
                source,
            })?;
        let dir = temp.path().to_path_buf();
        let io = |source| BuildkitError::Io {
            path: dir.clone(),
            source,
        };
        let dockerfile = dir.join("Dockerfile");
        tokio::fs::write(&dockerfile, HEREDOC_PROBE)
            .await
            .map_err(io)?;
        let mut command = self.command(None);
        command.args(["buildx", "build"]);
        if let Some(b) = &self.config.builder {
            command.args(["--builder", b]);
        }
        let dockerfile_arg = dockerfile.to_string_lossy().into_owned();
        let dir_arg = dir.to_string_lossy().into_owned();
        command.args([
            "--network=none",
            "--provenance=false",
            "--output",
            "type=cacheonly",
            "--progress=plain",
            "-f",
            &dockerfile_arg,
            &dir_arg,
        ]);
        let result = command.output().await;
        drop(temp);
        let out = result.map_err(|source| BuildkitError::Spawn {
            binary: self.config.docker.clone(),
            source,
        })?;
        if out.status.success() {
            return Ok(true);
        }
        let detail = String::from_utf8_lossy(&out.stderr).into_owned();
        match self.classify("buildx build (heredoc probe)", detail.clone()) {
            e @ BuildkitError::Unreachable { .. } => Err(e),
            _ if detail.contains("dockerfile parse error")
                || detail.contains("unknown instruction")
                || detail.contains("EOF") =>
            {
                Ok(false)
            }
            other => Err(other),
        }
    }

    /// The `docker buildx build` command of `job` (not started).
    fn build_command(&self, job: &BuildkitJob) -> Command {
        let mut command = self.command(job.docker_config.as_deref());
        command.args(["buildx", "build"]);
        if let Some(b) = &self.config.builder {
            command.args(["--builder", b]);
        }
        let mut output = format!("type=oci,dest={}", job.output.display());
        if job.compression == Compression::Zstd {
            output.push_str(",compression=zstd,force-compression=true");
        }
        command
            .arg(format!("--network={}", job.network.as_str()))
            .arg("--provenance=false")
            .arg("--output")
            .arg(output)
            .arg(match self.config.progress {
                ProgressFormat::RawJson => "--progress=rawjson",
                ProgressFormat::Plain => "--progress=plain",
            });
        for (id, file) in &job.secrets {
            command
                .arg("--secret")
                .arg(format!("id={id},src={}", file.display()));
        }
        for (name, dir) in &job.named_contexts {
            command
                .arg("--build-context")
                .arg(format!("{name}={}", dir.display()));
        }
        for (name, source) in &job.image_contexts {
            command
                .arg("--build-context")
                .arg(format!("{name}={source}"));
        }
        for (key, value) in &job.build_args {
            // In argv, never as `--build-arg KEY` plus an environment variable named KEY: the
            // name is the tenant's, and a variable of the tenant's choosing (`LD_PRELOAD`)
            // would run in the client. Build envs are not secrets (BuildKit's history names
            // them too); secrets travel as `--secret` files.
            command.arg("--build-arg").arg(format!("{key}={value}"));
        }
        if let Some(ssh) = &job.ssh {
            command.arg("--ssh").arg(ssh);
        }
        if job.no_cache {
            command.arg("--no-cache");
        }
        command
            .arg("-f")
            .arg(&job.dockerfile)
            .arg(&job.context)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        command
    }

    async fn run(
        &self,
        job: &BuildkitJob,
        events: Arc<dyn EventSink>,
    ) -> Result<(), BuildkitError> {
        let mut command = self.build_command(job);
        let mut child = command.spawn().map_err(|source| BuildkitError::Spawn {
            binary: self.config.docker.clone(),
            source,
        })?;
        let mut parser = ProgressParser::new(self.config.progress, events, job.redactor.clone());
        if let Some(mut stderr) = child.stderr.take() {
            let mut chunk = vec![0u8; 64 * 1024];
            loop {
                let n = stderr
                    .read(&mut chunk)
                    .await
                    .map_err(|source| BuildkitError::Io {
                        path: PathBuf::from("<buildx stderr>"),
                        source,
                    })?;
                if n == 0 {
                    break;
                }
                parser.feed(&chunk[..n]);
            }
        }
        parser.finish();
        let status = child.wait().await.map_err(|source| BuildkitError::Io {
            path: self.config.docker.clone(),
            source,
        })?;
        if status.success() {
            Ok(())
        } else {
            match parser.failure() {
                BuildkitError::Failed { message } => Err(self.classify_failure(message)),
                other => Err(other),
            }
        }
    }

    fn classify_failure(&self, message: String) -> BuildkitError {
        match self.classify("buildx build", message) {
            BuildkitError::Unsupported { detail, .. } => BuildkitError::Failed { message: detail },
            other => other,
        }
    }
}

impl BuildkitDriver for DockerBuildx {
    fn name(&self) -> &'static str {
        "docker-buildx"
    }

    fn detect(&self) -> BoxFuture<'_, Result<BuildkitInfo, BuildkitError>> {
        async move { self.info.get_or_try_init(|| self.probe()).await.cloned() }.boxed()
    }

    fn build<'a>(
        &'a self,
        job: &'a BuildkitJob,
        events: Arc<dyn EventSink>,
    ) -> BoxFuture<'a, Result<(), BuildkitError>> {
        async move {
            events.event(BuildEvent::Message {
                message: format!(
                    "buildkit: building {} (network {})",
                    job.dockerfile.display(),
                    job.network.as_str()
                ),
            });
            self.run(job, events).await
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::collections::BTreeMap;

    /// A tenant's build env named after a variable the loader, the shell or the docker client
    /// obeys never becomes a variable of the client process: it travels as `KEY=VALUE` in
    /// argv, and the client's environment holds only the allowlist and what we set.
    #[test]
    fn hostile_build_env_names_never_reach_the_client_environment() {
        let driver = DockerBuildx::new(DockerBuildxConfig {
            docker_host: Some("unix:///run/example.sock".into()),
            docker_config: Some("/etc/nullspace/docker".into()),
            ..DockerBuildxConfig::default()
        });
        let hostile = [
            "LD_PRELOAD",
            "LD_LIBRARY_PATH",
            "DOCKER_HOST",
            "DOCKER_CONFIG",
            "PATH",
            "BUILDX_BUILDER",
            "HOME",
        ];
        let job = BuildkitJob {
            dockerfile: "/staging/Dockerfile".into(),
            context: "/staging/context".into(),
            named_contexts: BTreeMap::new(),
            image_contexts: BTreeMap::new(),
            secrets: BTreeMap::new(),
            build_args: hostile
                .iter()
                .map(|k| (k.to_string(), format!("/tenant/{k}")))
                .collect(),
            network: super::super::Network::None,
            ssh: None,
            output: "/staging/image.tar".into(),
            compression: Compression::Gzip,
            docker_config: None,
            no_cache: false,
            redactor: Default::default(),
        };
        let command = driver.build_command(&job);
        let command = command.as_std();
        let envs: BTreeMap<String, Option<String>> = command
            .get_envs()
            .map(|(k, v)| {
                (
                    k.to_string_lossy().into_owned(),
                    v.map(|v| v.to_string_lossy().into_owned()),
                )
            })
            .collect();
        for (name, value) in &envs {
            assert!(
                value.as_deref().is_none_or(|v| !v.starts_with("/tenant/")),
                "{name}={value:?} came from the request"
            );
            assert!(
                INHERITED_ENV.contains(&name.as_str())
                    || [
                        "DOCKER_HOST",
                        "DOCKER_CONFIG",
                        "BUILDX_NO_DEFAULT_ATTESTATIONS",
                        "DOCKER_CLI_HINTS"
                    ]
                    .contains(&name.as_str()),
                "{name} is not on the allowlist"
            );
        }
        assert_eq!(
            envs.get("DOCKER_HOST").cloned().flatten().as_deref(),
            Some("unix:///run/example.sock")
        );
        let args: Vec<String> = command
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        for key in hostile {
            let pair = format!("{key}=/tenant/{key}");
            assert!(
                args.windows(2)
                    .any(|w| w[0] == "--build-arg" && w[1] == pair),
                "{pair} not passed as a build arg: {args:?}"
            );
        }
    }

    #[tokio::test]
    async fn unreachable_daemon_is_named() {
        let driver = DockerBuildx::new(DockerBuildxConfig {
            docker: std::env::var("NULLSPACE_DOCKER")
                .map(PathBuf::from)
                .unwrap_or_else(|_| "docker".into()),
            docker_host: Some("unix:///nonexistent/nullspace-test.sock".into()),
            docker_config: std::env::var("DOCKER_CONFIG").ok().map(PathBuf::from),
            builder: None,
            progress: ProgressFormat::RawJson,
        });
        let err = driver.detect().await.unwrap_err().to_string();
        // Without any docker binary the error names the binary instead.
        assert!(
            err.contains("nonexistent/nullspace-test.sock") || err.contains("cannot run"),
            "{err}"
        );
    }
}
