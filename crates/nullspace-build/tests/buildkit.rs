//! Dockerfile and declarative builds through the real BuildKit (Docker Engine 26 of
//! `scripts/devenv`) and the local registries, checked with e2fsck and debugfs.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};

use nullspace_build::buildkit::{BuildkitDriver, DockerBuildx, DockerBuildxConfig};
use nullspace_build::declarative::Step;
use nullspace_build::dockerfile::{
    BuildBackend, BuildkitPolicy, DockerfileSource, DockerfileSpec, RegistryAuth, SecretValue,
};
use nullspace_build::engine_dockerfile::{declarative_spec, BuildkitOptions};
use nullspace_build::{
    BaseSelector, BuildError, BuildEvent, BuildOutcome, BuildRequest, DataDir, Engine,
};
use nullspace_oci::{Credentials, RegistryConfig};

#[path = "buildkit/cloud_auth.rs"]
mod cloud_auth;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .unwrap()
        .to_path_buf()
}

/// Brings the devenv up once and exports its variables into this process.
fn devenv() -> &'static HashMap<String, String> {
    static ENV: OnceLock<HashMap<String, String>> = OnceLock::new();
    ENV.get_or_init(|| {
        let out = Command::new(repo_root().join("scripts/devenv"))
            .arg("up")
            .stderr(Stdio::inherit())
            .output()
            .expect("running scripts/devenv up");
        assert!(out.status.success(), "scripts/devenv up failed");
        let vars: HashMap<String, String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.strip_prefix("export "))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| {
                (
                    k.to_string(),
                    v.trim().trim_matches(['\'', '"']).to_string(),
                )
            })
            .collect();
        for (k, v) in &vars {
            std::env::set_var(k, v);
        }
        vars
    })
}

/// The devenv's `docker buildx`, as the CLI configures it from the same variables.
fn driver() -> &'static DockerBuildx {
    static DRIVER: OnceLock<DockerBuildx> = OnceLock::new();
    devenv();
    DRIVER.get_or_init(|| {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        DockerBuildx::new(DockerBuildxConfig {
            docker: var("NULLSPACE_DOCKER").map_or_else(|| "docker".into(), PathBuf::from),
            docker_host: var("DOCKER_HOST"),
            docker_config: var("DOCKER_CONFIG").map(PathBuf::from),
            ..DockerBuildxConfig::default()
        })
    })
}

/// Default options with a local user's policy (host network, cache mounts), with per-build
/// Docker configs linking the devenv's buildx plugin.
fn options() -> BuildkitOptions {
    devenv();
    BuildkitOptions {
        client_config_dir: std::env::var_os("DOCKER_CONFIG").map(PathBuf::from),
        policy: BuildkitPolicy::local(),
        ..BuildkitOptions::default()
    }
}

struct Env {
    data: tempfile::TempDir,
    engine: Engine,
    events: Arc<Mutex<Vec<BuildEvent>>>,
}

/// The test environment's VM runtime (`NULLSPACE_KERNEL` from `scripts/devenv`).
fn vm_config() -> nullspace_build::build_vm::VmConfig {
    nullspace_build::build_vm::VmConfig {
        kernel_dir: std::env::var_os("NULLSPACE_KERNEL").map(std::path::PathBuf::from),
        qemu: None,
        accel: Some(
            nullspace_vm::AccelChoice::parse(
                &std::env::var("NULLSPACE_VM_ACCEL").unwrap_or_default(),
            )
            .unwrap(),
        ),
    }
}

impl Env {
    fn new() -> Env {
        devenv();
        let data = tempfile::Builder::new()
            .prefix("nullspace-buildkit-test")
            .tempdir()
            .unwrap();
        let engine = Engine::open(
            DataDir::open(data.path()).unwrap(),
            RegistryConfig::from_env(),
        )
        .unwrap()
        .with_buildkit(driver().config().clone(), options())
        .with_vm(vm_config());
        Env {
            data,
            engine,
            events: Arc::new(Mutex::new(Vec::new())),
        }
    }

    async fn build_with(
        &self,
        options: &BuildkitOptions,
        request: &BuildRequest,
        spec: &DockerfileSpec,
        credentials: &Credentials,
    ) -> Result<BuildOutcome, BuildError> {
        let events = self.events.clone();
        let sink = Arc::new(move |e| events.lock().unwrap().push(e));
        self.engine
            .build_dockerfile_with(driver(), options, request, spec, credentials, sink)
            .await
    }

    async fn build(&self, name: &str, spec: &DockerfileSpec) -> Result<BuildOutcome, BuildError> {
        let request = BuildRequest::new(name, BaseSelector::DebianImage(None));
        self.build_with(&options(), &request, spec, &Credentials::Anonymous)
            .await
    }

    fn events_json(&self) -> String {
        serde_json::to_string(&*self.events.lock().unwrap()).unwrap()
    }

    /// Every file under the data dir.
    fn files(&self) -> Vec<PathBuf> {
        fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
            for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.is_dir() && !path.is_symlink() {
                    walk(&path, out);
                } else {
                    out.push(path);
                }
            }
        }
        let mut out = Vec::new();
        walk(self.data.path(), &mut out);
        out
    }
}

fn fsck(image: &Path) {
    let out = Command::new("e2fsck")
        .arg("-fn")
        .arg(image)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "e2fsck -fn {}:\n{}{}",
        image.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs one debugfs request on the image: its stdout, or `None` when the path is not found.
fn debugfs(image: &Path, request: &str) -> Option<String> {
    let out = Command::new("debugfs")
        .arg("-R")
        .arg(request)
        .arg(image)
        .output()
        .unwrap();
    if String::from_utf8_lossy(&out.stderr).contains("File not found") {
        return None;
    }
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `debugfs -R 'cat PATH'`; `None` when the file does not exist.
fn cat(image: &Path, path: &str) -> Option<String> {
    debugfs(image, &format!("cat {path}"))
}

/// Whether `path` exists in the image (`debugfs -R 'stat PATH'`).
fn exists(image: &Path, path: &str) -> bool {
    let Some(stat) = debugfs(image, &format!("stat {path}")) else {
        return false;
    };
    assert!(stat.contains("Inode:"), "debugfs stat {path}: {stat}");
    true
}

/// The names in directory `path` of the image, without `.` and `..` (`debugfs -R 'ls -p PATH'`).
fn ls(image: &Path, path: &str) -> Vec<String> {
    let listing =
        debugfs(image, &format!("ls -p {path}")).unwrap_or_else(|| panic!("{path}: not found"));
    // Lines are `/inode/mode/uid/gid/name/size/`.
    listing
        .lines()
        .filter_map(|l| l.split('/').nth(5))
        .filter(|n| !n.is_empty() && *n != "." && *n != "..")
        .map(str::to_string)
        .collect()
}

fn contains_bytes(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

fn write(dir: &Path, name: &str, text: &str) {
    let path = dir.join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

const SECRET: &str = "nullspace-s3cret-value-4242";

#[tokio::test]
async fn multistage_heredocs_mounts_named_context_and_dockerignore() {
    let env = Env::new();
    let work = tempfile::tempdir().unwrap();
    let ctx = work.path().join("app");
    let extra = work.path().join("extra");
    write(&ctx, "kept.txt", "kept\n");
    write(&ctx, "ignored.txt", "must not be copied\n");
    write(&ctx, "bindme.txt", "bound content\n");
    write(&ctx, ".dockerignore", "ignored.txt\n");
    write(&extra, "named.txt", "from the named context\n");
    write(
        &ctx,
        "Dockerfile",
        r#"# syntax=docker/dockerfile:1
FROM debian:bookworm AS builder
RUN <<EOF
set -e
mkdir -p /out
echo "built by heredoc" > /out/heredoc.txt
EOF
COPY <<EOF /out/copied-heredoc.txt
inline file
EOF

FROM debian:bookworm
COPY --from=builder /out/ /from-builder/
COPY --from=extra named.txt /named.txt
COPY . /ctx/
RUN --mount=type=cache,target=/var/cache/nscache \
    echo cached > /var/cache/nscache/x && ls /var/cache/nscache > /cache-listing
RUN --mount=type=bind,source=bindme.txt,target=/mnt/bound cat /mnt/bound > /from-bind
RUN --mount=type=tmpfs,target=/scratchpad \
    echo t > /scratchpad/x && grep -q " /scratchpad tmpfs " /proc/mounts && echo tmpfs-ok > /tmpfs-ok
RUN --mount=type=secret,id=token echo NONCE && \
    sha256sum /run/secrets/token | cut -d' ' -f1 > /secret.sha256 && cat /run/secrets/token
RUN test ! -e /run/secrets/token && echo absent > /secret-absent
"#,
    );
    // A fresh nonce: the secret step must run (not come from BuildKit's cache) for its output
    // to be checked.
    let dockerfile = std::fs::read_to_string(ctx.join("Dockerfile")).unwrap();
    let nonce = format!("{:?}-{}", std::time::SystemTime::now(), std::process::id());
    std::fs::write(
        ctx.join("Dockerfile"),
        dockerfile.replace("NONCE", &nonce.replace(['{', '}', ' ', ':', ','], "_")),
    )
    .unwrap();
    let mut spec = DockerfileSpec::new(DockerfileSource::Path(ctx.join("Dockerfile")));
    spec.named_contexts.insert("extra".into(), extra.clone());
    spec.build_secrets
        .insert("token".into(), SecretValue::new(SECRET));
    let outcome = env.build("multistage", &spec).await.unwrap();
    let rootfs = &outcome.rootfs_path;
    fsck(rootfs);
    assert_eq!(
        cat(rootfs, "/from-builder/heredoc.txt").unwrap(),
        "built by heredoc\n"
    );
    assert_eq!(
        cat(rootfs, "/from-builder/copied-heredoc.txt").unwrap(),
        "inline file\n"
    );
    assert_eq!(
        cat(rootfs, "/named.txt").unwrap(),
        "from the named context\n"
    );
    assert_eq!(cat(rootfs, "/ctx/kept.txt").unwrap(), "kept\n");
    assert_eq!(
        cat(rootfs, "/ctx/ignored.txt"),
        None,
        ".dockerignore not honoured"
    );
    assert_eq!(cat(rootfs, "/cache-listing").unwrap(), "x\n");
    assert_eq!(
        cat(rootfs, "/var/cache/nscache/x"),
        None,
        "cache mount leaked into the image"
    );
    assert_eq!(cat(rootfs, "/from-bind").unwrap(), "bound content\n");
    assert_eq!(cat(rootfs, "/mnt/bound"), None);
    assert_eq!(cat(rootfs, "/tmpfs-ok").unwrap(), "tmpfs-ok\n");
    assert_eq!(cat(rootfs, "/scratchpad/x"), None, "tmpfs content leaked");
    assert_eq!(
        cat(rootfs, "/secret.sha256").unwrap().trim(),
        sha256_hex(SECRET.as_bytes())
    );
    assert_eq!(cat(rootfs, "/secret-absent").unwrap(), "absent\n");

    let t = &outcome.template;
    assert_eq!(t.source.kind, "dockerfile");
    assert_eq!(t.build_config.build_backend, "buildkit");
    assert!(t.warnings.is_empty() || !t.warnings.iter().any(|w| w.contains(SECRET)));

    // The secret is nowhere at rest and in no log line.
    let events = env.events_json();
    assert!(!events.contains(SECRET), "secret in the events");
    assert!(
        events.contains("***"),
        "the secret line was not redacted: {events}"
    );
    assert!(
        events.contains("syntax"),
        "no warning about the dropped # syntax= line"
    );
    assert!(events.contains(r#""event":"step""#));
    for file in env.files() {
        let bytes = std::fs::read(&file).unwrap_or_default();
        assert!(
            !contains_bytes(&bytes, SECRET.as_bytes()),
            "secret found in {}",
            file.display()
        );
    }
    let staging = env.data.path().join("staging");
    assert_eq!(
        std::fs::read_dir(&staging).map(|d| d.count()).unwrap_or(0),
        0,
        "staging not empty"
    );
    assert!(!outcome.artifact_dir.join("buildkit").exists());

    // Rebuilt: every BuildKit step is a cache hit, and so is the rootfs.
    env.events.lock().unwrap().clear();
    let again = env.build("multistage", &spec).await.unwrap();
    assert!(again.rootfs_cache_hit);
    let hits = env
        .events
        .lock()
        .unwrap()
        .iter()
        .filter(|e| matches!(e, BuildEvent::Cache { status: nullspace_api::CacheStatus::Hit, subject, .. } if subject.starts_with("buildkit")))
        .count();
    assert!(hits >= 8, "only {hits} BuildKit cache hits");
}

#[tokio::test]
async fn image_config_becomes_runtime_defaults_and_metadata() {
    let env = Env::new();
    let dockerfile = r#"FROM debian:bookworm
RUN useradd -u 1234 -m app
LABEL org.example.team="platform" version="1.2"
ENV APP_HOME=/srv/app GREETING="hello world"
WORKDIR /srv/app
EXPOSE 8080/tcp 9090/udp
VOLUME ["/data"]
HEALTHCHECK --interval=1s --timeout=2s --start-period=1s --retries=4 CMD ["test", "-f", "/tmp/ready now"]
USER app:app
ENTRYPOINT ["/usr/bin/env", "sh"]
CMD ["-c", "touch '/tmp/ready now'; exec sleep 600"]
"#;
    let spec = DockerfileSpec::new(DockerfileSource::Content(dockerfile.into()));
    let outcome = env.build("config", &spec).await.unwrap();
    fsck(&outcome.rootfs_path);
    let json = serde_json::to_value(&outcome.template).unwrap();
    let runtime = &json["runtime_defaults"];
    assert_eq!(runtime["user"], "app:app");
    assert_eq!(runtime["workdir"], "/srv/app");
    assert_eq!(runtime["env"]["APP_HOME"], "/srv/app");
    assert_eq!(runtime["env"]["GREETING"], "hello world");
    assert!(runtime["env"]["PATH"]
        .as_str()
        .unwrap()
        .contains("/usr/bin"));
    // Entrypoint + Cmd, shell-escaped; the build VM ran it as app:app in /srv/app until the
    // HEALTHCHECK passed, and the snapshot holds it running.
    let start_cmd = runtime["start_cmd"].as_str().unwrap();
    assert!(start_cmd.starts_with("/usr/bin/env sh -c "), "{start_cmd}");
    assert_eq!(
        json["snapshot"]["start"]["state"], "running",
        "{}",
        json["snapshot"]
    );
    let meta = &json["oci_metadata"];
    assert_eq!(meta["labels"]["org.example.team"], "platform");
    assert_eq!(meta["labels"]["version"], "1.2");
    assert_eq!(
        meta["exposed_ports"],
        serde_json::json!(["8080/tcp", "9090/udp"])
    );
    assert_eq!(meta["volumes"], serde_json::json!(["/data"]));
    let hc = &meta["healthcheck"];
    assert_eq!(
        hc["test"],
        serde_json::json!(["CMD", "test", "-f", "/tmp/ready now"])
    );
    assert_eq!(hc["interval_ns"], 1_000_000_000i64);
    assert_eq!(
        hc["mapped_readiness"],
        serde_json::json!({"kind": "command", "command": "test -f '/tmp/ready now'",
            "interval_ms": 1000, "timeout_ms": 2000, "start_period_ms": 1000, "retries": 4})
    );
    assert_eq!(runtime["readiness"], hc["mapped_readiness"]);
    assert_eq!(json["source"]["kind"], "dockerfile");
    assert_eq!(json["source"]["requested"], "<inline Dockerfile>");
    // The same document is on disk.
    let on_disk: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&outcome.template_json_path).unwrap()).unwrap();
    assert_eq!(on_disk["runtime_defaults"], *runtime);
}

#[tokio::test]
async fn declarative_steps_render_and_build() {
    let env = Env::new();
    let ctx = tempfile::tempdir().unwrap();
    write(ctx.path(), "app.py", "print('hi')\n");
    let steps: Vec<Step> = serde_json::from_value(serde_json::json!([
        {"type": "set_build_envs", "envs": {"BUILD_ONLY": "build-time-value"}},
        {"type": "set_runtime_envs", "envs": {"NODE_ENV": "production"}},
        {"type": "make_dir", "path": "/workspace", "mode": "0755"},
        {"type": "copy", "src": "app.py", "dst": "/workspace/app.py"},
        {"type": "run_cmd", "cmd": "echo \"$BUILD_ONLY\" > /workspace/build-env.txt && echo \"$NODE_ENV\" > /workspace/runtime-env.txt && cat <<EOF > /workspace/here.txt\nheredoc in a command\nEOF"},
        {"type": "make_symlink", "target": "/workspace/app.py", "link": "/workspace/link.py"},
        {"type": "run_cmd", "cmd": "useradd -u 4321 -m runner && chown -R runner /workspace"},
        {"type": "set_user", "user": "runner"},
        {"type": "set_workdir", "path": "/workspace"},
        {"type": "run_cmd", "cmd": "id -un > whoami.txt && pwd > pwd.txt"}
    ]))
    .unwrap();
    let mut request = BuildRequest::new("declarative", BaseSelector::DebianImage(None));
    request.internet_access = false;
    let (spec, rendered) =
        declarative_spec(&request.base, &steps, Some(ctx.path().into())).unwrap();
    assert!(rendered
        .dockerfile
        .starts_with("FROM debian:bookworm\nARG BUILD_ONLY\n"));
    assert!(!rendered.dockerfile.contains("build-time-value"));
    assert!(!serde_json::to_string(&rendered)
        .unwrap()
        .contains("build-time-value"));
    let outcome = env
        .build_with(&options(), &request, &spec, &Credentials::Anonymous)
        .await
        .unwrap();
    let rootfs = &outcome.rootfs_path;
    fsck(rootfs);
    assert_eq!(cat(rootfs, "/workspace/app.py").unwrap(), "print('hi')\n");
    assert_eq!(
        cat(rootfs, "/workspace/build-env.txt").unwrap(),
        "build-time-value\n"
    );
    assert_eq!(
        cat(rootfs, "/workspace/runtime-env.txt").unwrap(),
        "production\n"
    );
    assert_eq!(
        cat(rootfs, "/workspace/here.txt").unwrap(),
        "heredoc in a command\n"
    );
    assert_eq!(cat(rootfs, "/workspace/whoami.txt").unwrap(), "runner\n");
    assert_eq!(cat(rootfs, "/workspace/pwd.txt").unwrap(), "/workspace\n");
    let t = &outcome.template;
    assert_eq!(t.source.kind, "declarative");
    assert_eq!(t.source.requested, "debian:bookworm");
    assert_eq!(t.build_config.build_backend, "buildkit");
    assert!(!t.build_config.internet_access);
    assert_eq!(t.runtime_defaults.user.as_deref(), Some("runner"));
    assert_eq!(t.runtime_defaults.workdir.as_deref(), Some("/workspace"));
    assert_eq!(
        t.runtime_defaults.env.get("NODE_ENV").map(String::as_str),
        Some("production")
    );
    assert!(!t.runtime_defaults.env.contains_key("BUILD_ONLY"));
    let doc = std::fs::read_to_string(&outcome.template_json_path).unwrap();
    assert!(!doc.contains("build-time-value"));
    // The image config's Env has no build env (history may name it; see the engine docs).
    let config_path = env
        .data
        .path()
        .join("blobs")
        .join("sha256")
        .join(t.source.config_digest.trim_start_matches("sha256:"));
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(config_path).unwrap()).unwrap();
    let image_env = config["config"]["Env"].to_string();
    assert!(image_env.contains("NODE_ENV=production"));
    assert!(!image_env.contains("BUILD_ONLY"), "{image_env}");
}

/// `scripts/devenv`'s debian-bookworm image whose only apt source is an on-image `file:`
/// repository (hello, jq, libjq1, libonig5), so `apt_install` runs with the network off.
fn localapt_ref() -> String {
    devenv()
        .get("NULLSPACE_FIXTURE_LOCALAPT_REF")
        .expect("scripts/devenv up exports NULLSPACE_FIXTURE_LOCALAPT_REF")
        .clone()
}

/// Whether `/var/lib/dpkg/status` of the image says `package` is installed.
fn dpkg_installed(image: &Path, package: &str) -> bool {
    let status = cat(image, "/var/lib/dpkg/status").unwrap();
    status.split("\n\n").any(|stanza| {
        stanza.lines().any(|l| l == format!("Package: {package}"))
            && stanza.lines().any(|l| l == "Status: install ok installed")
    })
}

#[tokio::test]
async fn declarative_apt_install_runs_offline_from_a_local_repository() {
    let env = Env::new();
    let base = localapt_ref();
    let steps: Vec<Step> = serde_json::from_value(serde_json::json!([
        {"type": "set_runtime_envs", "envs": {"APP_MODE": "offline-apt"}},
        {"type": "apt_install", "packages": ["hello"]},
        {"type": "run_cmd", "cmd": "hello > /hello.txt && useradd -u 4321 -m runner && mkdir -p /workspace && chown runner /workspace"},
        {"type": "set_user", "user": "runner"},
        {"type": "set_workdir", "path": "/workspace"},
        // As a non-root user: the renderer switches to root for apt and back. jq pulls in libjq1
        // and libonig5, which apt must resolve from the repository.
        {"type": "apt_install", "packages": ["jq"]},
        {"type": "run_cmd", "cmd": "echo '{\"a\":1}' | jq .a > jq.txt && hello > hello.txt && id -un > whoami.txt && pwd > pwd.txt"}
    ]))
    .unwrap();
    let mut request = BuildRequest::new("apt-offline", BaseSelector::BaseImage(base.clone()));
    request.internet_access = false;
    let (spec, rendered) = declarative_spec(&request.base, &steps, None).unwrap();
    assert!(rendered.dockerfile.starts_with(&format!("FROM {base}\n")));
    assert!(
        rendered.dockerfile.contains(
            "USER runner\nWORKDIR \"/workspace\"\nUSER root\nRUN [\"/bin/sh\",\"-c\",\"apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends jq && rm -rf /var/lib/apt/lists/*\"]\nUSER runner\n"
        ),
        "{}",
        rendered.dockerfile
    );
    let outcome = env
        .build_with(&options(), &request, &spec, &Credentials::Anonymous)
        .await
        .unwrap_or_else(|e| panic!("{e}\nevents: {}", env.events_json()));
    let rootfs = &outcome.rootfs_path;
    fsck(rootfs);
    // The repository is there, and apt's only source.
    assert!(exists(rootfs, "/opt/nullspace-apt/Packages"));
    assert_eq!(
        cat(rootfs, "/etc/apt/sources.list").unwrap(),
        "deb [trusted=yes] file:/opt/nullspace-apt ./\n"
    );
    assert!(exists(rootfs, "/usr/bin/hello"));
    assert!(exists(rootfs, "/usr/bin/jq"));
    assert_eq!(cat(rootfs, "/hello.txt").unwrap(), "Hello, world!\n");
    assert_eq!(
        cat(rootfs, "/workspace/hello.txt").unwrap(),
        "Hello, world!\n"
    );
    assert_eq!(cat(rootfs, "/workspace/jq.txt").unwrap(), "1\n");
    assert_eq!(cat(rootfs, "/workspace/whoami.txt").unwrap(), "runner\n");
    assert_eq!(cat(rootfs, "/workspace/pwd.txt").unwrap(), "/workspace\n");
    for package in ["hello", "jq", "libjq1", "libonig5"] {
        assert!(dpkg_installed(rootfs, package), "{package} not installed");
    }
    assert!(!dpkg_installed(rootfs, "no-such-package-nullspace"));
    // apt_install promises the lists are removed after each install.
    assert_eq!(
        ls(rootfs, "/var/lib/apt/lists"),
        Vec::<String>::new(),
        "apt lists left behind"
    );

    let t = &outcome.template;
    assert_eq!(t.source.kind, "declarative");
    assert_eq!(t.source.requested, base);
    assert_eq!(t.build_config.build_backend, "buildkit");
    assert!(!t.build_config.internet_access);
    assert_eq!(t.runtime_defaults.user.as_deref(), Some("runner"));
    assert_eq!(t.runtime_defaults.workdir.as_deref(), Some("/workspace"));
    assert_eq!(
        t.runtime_defaults.env.get("APP_MODE").map(String::as_str),
        Some("offline-apt")
    );
    assert!(t.runtime_defaults.env["PATH"].contains("/usr/bin"));
}

#[tokio::test]
async fn declarative_apt_install_of_a_missing_package_fails_the_build() {
    let env = Env::new();
    let steps: Vec<Step> = serde_json::from_value(serde_json::json!([
        {"type": "apt_install", "packages": ["hello", "no-such-package-nullspace"]}
    ]))
    .unwrap();
    let mut request = BuildRequest::new("apt-missing", BaseSelector::BaseImage(localapt_ref()));
    request.internet_access = false;
    let (spec, _) = declarative_spec(&request.base, &steps, None).unwrap();
    let e = env
        .build_with(&options(), &request, &spec, &Credentials::Anonymous)
        .await
        .unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("apt-get install -y --no-install-recommends hello no-such-package-nullspace")
            && msg.contains("exit code: 100"),
        "{msg}"
    );
    assert_eq!(e.phase().to_string(), "build_steps");
    let events = env.events_json();
    assert!(
        events.contains("Unable to locate package no-such-package-nullspace"),
        "apt's message is not in the build log: {events}"
    );
    assert_eq!(
        std::fs::read_dir(env.data.path().join("staging"))
            .map(|d| d.count())
            .unwrap_or(0),
        0
    );
}

#[tokio::test]
async fn network_none_blocks_the_network() {
    let env = Env::new();
    let spec = DockerfileSpec::new(DockerfileSource::Content(
        "FROM debian:bookworm\nRUN cat /proc/net/dev | tail -n +3 | cut -d: -f1 | tr -d ' ' | sort > /ifaces\n"
            .into(),
    ));
    let mut request = BuildRequest::new("offline", BaseSelector::DebianImage(None));
    request.internet_access = false;
    let outcome = env
        .build_with(&options(), &request, &spec, &Credentials::Anonymous)
        .await
        .unwrap();
    assert_eq!(cat(&outcome.rootfs_path, "/ifaces").unwrap(), "lo\n");
}

#[tokio::test]
async fn rejections_happen_before_anything_runs() {
    let env = Env::new();
    let check = |spec: &DockerfileSpec, policy: &BuildkitPolicy, want: &[&str]| {
        let e = spec.validate(policy, Some(true)).unwrap_err();
        let msg = e.to_string();
        assert_eq!(e.code(), "invalid_request", "{msg}");
        for w in want {
            assert!(msg.contains(w), "{msg:?} should contain {w:?}");
        }
    };
    // A local user's policy: the devenv's registry is on loopback.
    let policy = BuildkitPolicy::local();
    let mut native =
        DockerfileSpec::new(DockerfileSource::Content("FROM debian:bookworm\n".into()));
    native.build_backend = Some(BuildBackend::Native);
    check(&native, &policy, &["build_backend", "native"]);
    let secret = DockerfileSpec::new(DockerfileSource::Content(
        "FROM debian:bookworm\nRUN true\nRUN --mount=type=secret,id=npmrc cat /run/secrets/npmrc\n"
            .into(),
    ));
    check(&secret, &policy, &["line 3", "\"npmrc\""]);
    let ssh = DockerfileSpec::new(DockerfileSource::Content(
        "FROM debian:bookworm\nRUN --mount=type=ssh true\n".into(),
    ));
    check(&ssh, &policy, &["line 2", "SSH"]);
    let mut auth = DockerfileSpec::new(DockerfileSource::Content(
        "FROM 127.0.0.1:5000/library/debian:bookworm\n".into(),
    ));
    auth.registry_auth.push(RegistryAuth {
        registry: "registry.example.com".into(),
        username: "u".into(),
        password: SecretValue::new("pw-not-shown"),
    });
    check(
        &auth,
        &policy,
        &["registry_auth", "registry.example.com", "127.0.0.1:5000"],
    );
    // Through the engine: same errors, and no build record, no staging.
    let e = env.build("rejected", &secret).await.unwrap_err();
    assert_eq!(e.code(), "invalid_request");
    assert!(env.engine.store().list().unwrap().is_empty());
}

#[tokio::test]
async fn registry_auth_reaches_a_private_registry() {
    let vars = devenv();
    let env = Env::new();
    let registry = vars["NULLSPACE_AUTH_REGISTRY"].clone();
    let password = vars["NULLSPACE_AUTH_PASSWORD"].clone();
    let text =
        format!("FROM {registry}/library/debian:bookworm\nRUN echo private > /private.txt\n");
    let mut spec = DockerfileSpec::new(DockerfileSource::Content(text));
    spec.registry_auth.push(RegistryAuth {
        registry: registry.clone(),
        username: vars["NULLSPACE_AUTH_USER"].clone(),
        password: SecretValue::new(password.clone()),
    });
    let outcome = env.build("private", &spec).await.unwrap();
    assert_eq!(
        cat(&outcome.rootfs_path, "/private.txt").unwrap(),
        "private\n"
    );
    for file in env.files() {
        let bytes = std::fs::read(&file).unwrap_or_default();
        assert!(
            !contains_bytes(&bytes, password.as_bytes()),
            "password in {}",
            file.display()
        );
    }
    // base_image_auth does the same for the final stage's registry.
    let env2 = Env::new();
    let spec2 = DockerfileSpec::new(DockerfileSource::Content(format!(
        "FROM {registry}/library/debian:bookworm\nRUN echo base-auth > /b.txt\n"
    )));
    let request = BuildRequest::new("private2", BaseSelector::DebianImage(None));
    let credentials = Credentials::Basic {
        username: vars["NULLSPACE_AUTH_USER"].clone(),
        password,
    };
    let outcome = env2
        .build_with(&options(), &request, &spec2, &credentials)
        .await
        .unwrap();
    assert_eq!(cat(&outcome.rootfs_path, "/b.txt").unwrap(), "base-auth\n");
    assert_eq!(
        serde_json::to_value(&outcome.template.build_config).unwrap()["base_image_auth_kind"],
        "basic"
    );
}

#[tokio::test]
async fn failing_step_is_named_and_recorded() {
    let env = Env::new();
    let mut spec = DockerfileSpec::new(DockerfileSource::Content(
        "FROM debian:bookworm\nRUN --mount=type=secret,id=k cat /run/secrets/k; exit 3\n".into(),
    ));
    spec.build_secrets
        .insert("k".into(), SecretValue::new("very-secret-k"));
    let e = env.build("fails", &spec).await.unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("RUN --mount=type=secret,id=k") && msg.contains("exit code: 3"),
        "{msg}"
    );
    assert_eq!(e.phase().to_string(), "build_steps");
    assert!(!env.events_json().contains("very-secret-k"));
    assert_eq!(
        std::fs::read_dir(env.data.path().join("staging"))
            .map(|d| d.count())
            .unwrap_or(0),
        0
    );
}

#[tokio::test]
async fn cancelling_kills_the_buildkit_build() {
    let env = Env::new();
    let marker = format!("{}", 40_000 + std::process::id() % 20_000);
    let spec = DockerfileSpec::new(DockerfileSource::Content(format!(
        "FROM debian:bookworm\nRUN sleep {marker}\n"
    )));
    let running = || {
        let out = Command::new("pgrep")
            .args(["-f", &format!("sleep {marker}")])
            .output()
            .unwrap();
        out.status.success()
    };
    let mut build = Box::pin(env.build("cancelled", &spec));
    let mut seen = false;
    for _ in 0..300 {
        tokio::select! {
            r = &mut build => panic!("the build ended: {:?}", r.map(|o| o.build_id)),
            _ = tokio::time::sleep(std::time::Duration::from_millis(100)) => {}
        }
        if running() {
            seen = true;
            break;
        }
    }
    assert!(seen, "the RUN step never started");
    drop(build);
    let mut gone = false;
    for _ in 0..100 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        if !running() {
            gone = true;
            break;
        }
    }
    assert!(gone, "the BuildKit step survived the cancelled build");
}

#[tokio::test]
async fn detect_reports_the_daemon() {
    let info = driver().detect().await.unwrap();
    assert_eq!(info.driver, "docker-buildx");
    assert!(info.heredocs);
    assert!(info.endpoint.starts_with("unix://"), "{info:?}");
    assert!(!info.builder.is_empty());
    let again = driver().detect().await.unwrap();
    assert_eq!(info, again);
}
