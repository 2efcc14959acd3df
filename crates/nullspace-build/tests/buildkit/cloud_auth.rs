//! Cloud `base_image_auth` for BuildKit builds, end to end: a GCP service-account key is
//! exchanged at a token endpoint that verifies the signed JWT (with openssl), an AWS access key
//! by moto's ECR emulator, and the resulting basic credentials let the real BuildKit of
//! `scripts/devenv` pull the Dockerfile's base from a `docker-registry` behind htpasswd auth
//! (on a 127.0.0.1 port, which Docker treats as an insecure registry), holding a copy of the
//! devenv's `library/debian:bookworm`.
//!
//! Needs `docker-registry`, `htpasswd`, `skopeo`, `openssl`, `debugfs` and, for ECR,
//! `moto_server` on PATH; a test whose tools are missing fails, naming them.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use futures_util::future::BoxFuture;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use nullspace_build::buildkit::{BuildkitDriver, BuildkitError, BuildkitInfo, BuildkitJob};
use nullspace_build::dockerfile::{DockerfileSource, DockerfileSpec};
use nullspace_build::events::EventSink;
use nullspace_build::{
    BaseSelector, BuildError, BuildEvent, BuildOutcome, BuildRequest, DataDir, Engine,
};
use nullspace_oci::{Credentials, RegistryConfig};

use super::{devenv, driver as docker_buildx};

// ---------------------------------------------------------------------------------------------
// BuildKit and the engine.

/// The devenv's BuildKit, counting builds and keeping the Docker config each build was given
/// (read while BuildKit runs: the engine deletes it right after).
#[derive(Default)]
struct Recording {
    builds: AtomicUsize,
    docker_configs: Mutex<Vec<Option<String>>>,
}

impl BuildkitDriver for Recording {
    fn name(&self) -> &'static str {
        "recording"
    }

    fn detect(&self) -> BoxFuture<'_, Result<BuildkitInfo, BuildkitError>> {
        docker_buildx().detect()
    }

    fn build<'a>(
        &'a self,
        job: &'a BuildkitJob,
        events: Arc<dyn EventSink>,
    ) -> BoxFuture<'a, Result<(), BuildkitError>> {
        self.builds.fetch_add(1, Ordering::SeqCst);
        let config = job.docker_config.as_ref().map(|dir| {
            let path = dir.join("config.json");
            let mode = std::os::unix::fs::PermissionsExt::mode(
                &std::fs::metadata(&path).unwrap().permissions(),
            );
            assert_eq!(mode & 0o777, 0o600, "{}", path.display());
            std::fs::read_to_string(path).unwrap()
        });
        self.docker_configs.lock().unwrap().push(config);
        docker_buildx().build(job, events)
    }
}

struct Env {
    data: tempfile::TempDir,
    engine: Engine,
    driver: Recording,
    events: Arc<Mutex<Vec<BuildEvent>>>,
}

impl Env {
    fn new() -> Env {
        devenv();
        let data = tempfile::Builder::new()
            .prefix("nullspace-buildkit-cloud-test")
            .tempdir()
            .unwrap();
        let engine = Engine::open(
            DataDir::open(data.path()).unwrap(),
            RegistryConfig::from_env(),
        )
        .unwrap()
        .with_buildkit(super::driver().config().clone(), super::options())
        .with_vm(super::vm_config());
        Env {
            data,
            engine,
            driver: Recording::default(),
            events: Arc::new(Mutex::new(Vec::new())),
        }
    }

    async fn build(
        &self,
        name: &str,
        dockerfile: &str,
        credentials: &Credentials,
    ) -> Result<BuildOutcome, BuildError> {
        let events = self.events.clone();
        let sink = Arc::new(move |e| events.lock().unwrap().push(e));
        let request = BuildRequest::new(name, BaseSelector::DebianImage(None));
        let spec = DockerfileSpec::new(DockerfileSource::Content(dockerfile.to_owned()));
        self.engine
            .build_dockerfile_with(
                &self.driver,
                &super::options(),
                &request,
                &spec,
                credentials,
                sink,
            )
            .await
    }

    fn events_json(&self) -> String {
        serde_json::to_string(&*self.events.lock().unwrap()).unwrap()
    }

    /// The contents of every file under the data dir (the database included).
    fn file_contents(&self) -> Vec<(PathBuf, Vec<u8>)> {
        fn walk(dir: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) {
            for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.is_dir() && !path.is_symlink() {
                    walk(&path, out);
                } else {
                    let bytes = std::fs::read(&path).unwrap_or_default();
                    out.push((path, bytes));
                }
            }
        }
        let mut out = Vec::new();
        walk(self.data.path(), &mut out);
        out
    }

    /// Asserts that no file of the data dir, no event and none of `texts` holds a secret.
    fn assert_no_secrets(&self, texts: &[String], secrets: &[&str]) {
        let files = self.file_contents();
        assert!(!files.is_empty());
        let events = self.events_json();
        for secret in secrets {
            assert!(secret.len() >= 16, "{secret:?} is too short to search for");
            for (path, bytes) in &files {
                assert!(
                    !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                    "a secret is in {}",
                    path.display()
                );
            }
            assert!(!events.contains(secret), "a secret is in the events");
            for text in texts {
                assert!(!text.contains(secret), "a secret is in: {text}");
            }
        }
    }
}

/// The content of `path` in the ext4 image (which must hold it).
fn cat(image: &Path, path: &str) -> String {
    super::cat(image, path).unwrap_or_else(|| panic!("{path} is not in {}", image.display()))
}

/// The user and password of `host` in a Docker config.json.
fn config_auth(config: &str, host: &str) -> Option<String> {
    let config: Value = serde_json::from_str(config).unwrap();
    let auth = config["auths"][host]["auth"].as_str()?;
    String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(auth)
            .unwrap(),
    )
    .ok()
}

// ---------------------------------------------------------------------------------------------
// Tools, processes and the private registry.

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| {
        std::env::split_paths(&p).any(|d| {
            let f = d.join(tool);
            f.is_file()
                && std::fs::metadata(&f)
                    .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0)
                    .unwrap_or(false)
        })
    })
}

/// Fails the test, naming the missing tools, when one is not on PATH (`scripts/test` installs
/// them all; a skipped check would pass without checking anything).
fn require_tools(test: &str, tools: &[&str]) {
    let missing: Vec<&str> = tools.iter().copied().filter(|t| !on_path(t)).collect();
    assert!(
        missing.is_empty(),
        "{test}: not on PATH: {} (moto: `pip install 'moto[server]'`; the rest: \
         `apt-get install docker-registry apache2-utils skopeo gzip openssl e2fsprogs`)",
        missing.join(", ")
    );
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A child process killed (and reaped) when dropped.
struct ProcessGuard {
    child: Child,
    name: &'static str,
    log: PathBuf,
}

impl ProcessGuard {
    fn spawn(name: &'static str, cmd: &mut Command, log: PathBuf) -> ProcessGuard {
        let out = std::fs::File::create(&log).unwrap();
        let err = out.try_clone().unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        ProcessGuard { child, name, log }
    }

    /// Waits until `http://{host}{path}` answers with `status` (the process is serving).
    async fn wait_until(&mut self, host: &str, path: &str, status: u16) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(exit)) = self.child.try_wait() {
                panic!(
                    "{} exited ({exit}): {}",
                    self.name,
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            if http_status(host, path) == Some(status) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not come up: {}",
                self.name,
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The status of a plain `GET http://{host}{path}`, if anything answered.
fn http_status(host: &str, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(host).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").ok()?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

impl Drop for ProcessGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `docker-registry` on 127.0.0.1 with htpasswd auth for `user`, holding a copy of the
/// devenv's `library/debian:bookworm` (copied with skopeo).
struct Registry {
    host: String,
    _proc: ProcessGuard,
}

async fn private_registry(dir: &Path, user: &str, password: &str) -> Registry {
    let out = Command::new("htpasswd")
        .args(["-Bbn", user, password])
        .output()
        .unwrap();
    assert!(out.status.success(), "htpasswd failed");
    std::fs::write(dir.join("htpasswd"), &out.stdout).unwrap();
    std::fs::create_dir_all(dir.join("storage")).unwrap();
    let port = free_port();
    let config = format!(
        "version: 0.1\n\
         log:\n  level: warn\n\
         storage:\n  filesystem:\n    rootdirectory: {storage}\n\
         http:\n  addr: 127.0.0.1:{port}\n\
         auth:\n  htpasswd:\n    realm: nullspace-test\n    path: {htpasswd}\n",
        storage = dir.join("storage").display(),
        htpasswd = dir.join("htpasswd").display(),
    );
    std::fs::write(dir.join("config.yml"), config).unwrap();
    let mut proc = ProcessGuard::spawn(
        "docker-registry",
        Command::new("docker-registry")
            .arg("serve")
            .arg(dir.join("config.yml")),
        dir.join("registry.log"),
    );
    let host = format!("127.0.0.1:{port}");
    proc.wait_until(&host, "/v2/", 401).await;
    let source = &devenv()["NULLSPACE_REGISTRY"];
    let out = Command::new("skopeo")
        .args([
            "--insecure-policy",
            "copy",
            "--quiet",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
        ])
        .arg("--dest-creds")
        .arg(format!("{user}:{password}"))
        .arg(format!("docker://{source}/library/debian:bookworm"))
        .arg(format!("docker://{host}/library/debian:bookworm"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo copy failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Registry { host, _proc: proc }
}

// ---------------------------------------------------------------------------------------------
// GCP: a token endpoint that checks the assertion like Google's does.

/// An RSA key made by openssl: the PKCS#8 PEM of the private key and the public key's path.
fn openssl_rsa_key(dir: &Path, name: &str) -> (String, PathBuf) {
    let pem = dir.join(format!("{name}.pem"));
    let public = dir.join(format!("{name}.pub.pem"));
    let ok = Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&pem)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(ok.success(), "openssl genpkey failed");
    let ok = Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&pem)
        .arg("-out")
        .arg(&public)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(ok.success(), "openssl pkey -pubout failed");
    (std::fs::read_to_string(pem).unwrap(), public)
}

struct TokenEndpoint {
    dir: PathBuf,
    public_key: PathBuf,
    client_email: String,
    key_id: String,
    token_uri: Mutex<String>,
    access_token: String,
    exchanges: AtomicUsize,
    rejections: AtomicUsize,
}

impl TokenEndpoint {
    /// Checks a `grant_type=jwt-bearer&assertion=JWT` body: the RS256 signature (openssl
    /// against the service account's public key), header and claims.
    fn verify(&self, body: &str) -> Result<(), &'static str> {
        let mut grant = None;
        let mut assertion = None;
        for pair in body.split('&') {
            match pair.split_once('=') {
                Some(("grant_type", v)) => grant = Some(v.replace("%3A", ":")),
                Some(("assertion", v)) => assertion = Some(v.to_owned()),
                _ => {}
            }
        }
        if grant.as_deref() != Some("urn:ietf:params:oauth:grant-type:jwt-bearer") {
            return Err("Invalid grant_type.");
        }
        let jwt = assertion.ok_or("Missing assertion.")?;
        let parts: Vec<&str> = jwt.split('.').collect();
        let [h, c, s] = parts[..] else {
            return Err("Invalid JWT.");
        };
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let n = self.exchanges.load(Ordering::SeqCst) + self.rejections.load(Ordering::SeqCst);
        let input = self.dir.join(format!("jwt-{n}.input"));
        let signature = self.dir.join(format!("jwt-{n}.sig"));
        std::fs::write(&input, format!("{h}.{c}")).unwrap();
        std::fs::write(&signature, b64.decode(s).map_err(|_| "Invalid JWT.")?).unwrap();
        let verified = Command::new("openssl")
            .args(["dgst", "-sha256", "-verify"])
            .arg(&self.public_key)
            .arg("-signature")
            .arg(&signature)
            .arg(&input)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success();
        if !verified {
            return Err("Invalid JWT Signature.");
        }
        let header: Value = serde_json::from_slice(&b64.decode(h).unwrap()).unwrap();
        let claims: Value = serde_json::from_slice(&b64.decode(c).unwrap()).unwrap();
        if header["alg"] != "RS256" || header["typ"] != "JWT" || header["kid"] != *self.key_id {
            return Err("Invalid JWT header.");
        }
        let iat = claims["iat"].as_u64().ok_or("Missing iat.")?;
        let ok = claims["iss"] == *self.client_email
            && claims["scope"] == "https://www.googleapis.com/auth/cloud-platform"
            && claims["aud"] == *self.token_uri.lock().unwrap()
            && claims["exp"].as_u64() == Some(iat + 3600)
            && iat.abs_diff(now_secs()) <= 60;
        ok.then_some(()).ok_or("Invalid JWT claims.")
    }

    /// The HTTP status line and JSON body answering `body`.
    fn answer(&self, body: &str) -> (&'static str, String) {
        match self.verify(body) {
            Ok(()) => {
                self.exchanges.fetch_add(1, Ordering::SeqCst);
                let token = json!({
                    "access_token": self.access_token,
                    "expires_in": 3599,
                    "token_type": "Bearer",
                });
                ("200 OK", token.to_string())
            }
            Err(description) => {
                self.rejections.fetch_add(1, Ordering::SeqCst);
                let error = json!({"error": "invalid_grant", "error_description": description});
                ("400 Bad Request", error.to_string())
            }
        }
    }
}

/// Reads one HTTP/1.1 request and returns its body.
async fn read_request_body(stream: &mut tokio::net::TcpStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            if buf.len() >= end + 4 + length {
                return String::from_utf8_lossy(&buf[end + 4..end + 4 + length]).into_owned();
            }
        }
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "connection closed mid-request");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Serves `ep` on 127.0.0.1 (one request per connection); returns `host:port`.
async fn serve_token_endpoint(ep: Arc<TokenEndpoint>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let host = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let ep = ep.clone();
            tokio::spawn(async move {
                let body = read_request_body(&mut stream).await;
                let (status, json) = tokio::task::spawn_blocking(move || ep.answer(&body))
                    .await
                    .unwrap();
                let response = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\n\
                     content-length: {}\r\nconnection: close\r\n\r\n{json}",
                    json.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    host
}

fn key_json(email: &str, key_id: &str, pem: &str, token_uri: &str) -> String {
    json!({
        "type": "service_account",
        "project_id": "nullspace-test",
        "private_key_id": key_id,
        "private_key": pem,
        "client_email": email,
        "client_id": "1234567890",
        "token_uri": token_uri,
    })
    .to_string()
}

/// A distinctive piece of a PEM's base64 body.
fn pem_fragment(pem: &str) -> String {
    pem.lines().nth(5).unwrap().to_owned()
}

#[tokio::test]
async fn gcp_base_image_auth_reaches_a_private_registry_through_buildkit() {
    require_tools(
        "gcp buildkit test",
        &[
            "docker-registry",
            "htpasswd",
            "skopeo",
            "openssl",
            "debugfs",
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let (pem, public_key) = openssl_rsa_key(dir.path(), "sa");
    let (other_pem, _) = openssl_rsa_key(dir.path(), "other");
    let email = "builder@nullspace-test.iam.gserviceaccount.com";
    let access_token = format!("ya29.buildkit-test-{}", now_secs());
    let ep = Arc::new(TokenEndpoint {
        dir: dir.path().to_path_buf(),
        public_key,
        client_email: email.to_owned(),
        key_id: "0123456789abcdef".to_owned(),
        token_uri: Mutex::new(String::new()),
        access_token: access_token.clone(),
        exchanges: AtomicUsize::new(0),
        rejections: AtomicUsize::new(0),
    });
    let token_uri = format!("http://{}/token", serve_token_endpoint(ep.clone()).await);
    *ep.token_uri.lock().unwrap() = token_uri.clone();
    let registry = private_registry(dir.path(), "oauth2accesstoken", &access_token).await;
    let dockerfile = format!(
        "FROM {}/library/debian:bookworm\nRUN echo ok > /ok\n",
        registry.host
    );
    let env = Env::new();
    let mut texts = Vec::new();

    // Without credentials BuildKit is refused: the registry really wants the token.
    let err = env
        .build("gcp-anonymous", &dockerfile, &Credentials::Anonymous)
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("401"), "{msg}");
    // A private Docker config without credentials: nothing ambient is lent to the build.
    assert_eq!(
        env.driver.docker_configs.lock().unwrap()[0].as_deref(),
        Some(r#"{"auths":{}}"#)
    );

    // The key is exchanged once, before BuildKit, and BuildKit gets oauth2accesstoken/token.
    let good = Credentials::gcp(key_json(email, "0123456789abcdef", &pem, &token_uri));
    let outcome = env.build("gcp-private", &dockerfile, &good).await.unwrap();
    assert_eq!(cat(&outcome.rootfs_path, "/ok"), "ok\n");
    assert_eq!(ep.exchanges.load(Ordering::SeqCst), 1);
    assert_eq!(env.driver.builds.load(Ordering::SeqCst), 2);
    let config = env.driver.docker_configs.lock().unwrap()[1]
        .clone()
        .unwrap();
    assert_eq!(
        config_auth(&config, &registry.host),
        Some(format!("oauth2accesstoken:{access_token}"))
    );
    assert_eq!(
        serde_json::to_value(&outcome.template.build_config).unwrap()["base_image_auth_kind"],
        "gcp"
    );
    let events = env.events_json();
    assert!(
        events.contains(&format!(
            "base_image_auth: exchanging gcp credentials for registry {}",
            registry.host
        )),
        "{events}"
    );
    texts.push(format!("{outcome:?}"));
    texts.push(format!("{good:?}"));

    // A tampered key (another private key, same e-mail and key id): the endpoint refuses its
    // signature, the build fails before BuildKit runs and before a build record exists, and
    // the good key's cached token is not reused.
    let templates = env.engine.store().list().unwrap().len();
    let tampered = Credentials::gcp(key_json(email, "0123456789abcdef", &other_pem, &token_uri));
    let err = env
        .build("gcp-tampered", &dockerfile, &tampered)
        .await
        .unwrap_err();
    let msg = err.to_string();
    for want in [
        "gcp token exchange",
        email,
        &token_uri,
        "http 400",
        "invalid_grant",
        "Invalid JWT Signature.",
    ] {
        assert!(msg.contains(want), "{msg} (wanted {want})");
    }
    assert_eq!(err.code(), "build_error", "{msg}");
    assert_eq!(err.phase().to_string(), "base_image_import", "{msg}");
    assert_eq!(ep.rejections.load(Ordering::SeqCst), 1);
    assert_eq!(env.driver.builds.load(Ordering::SeqCst), 2, "BuildKit ran");
    assert_eq!(env.engine.store().list().unwrap().len(), templates);
    texts.push(msg);
    texts.push(format!("{err:?}"));

    // No key material and no token anywhere: data dir, events, errors, Debug output.
    env.assert_no_secrets(
        &texts,
        &[
            &pem_fragment(&pem),
            &pem_fragment(&other_pem),
            &access_token,
        ],
    );
}

// ---------------------------------------------------------------------------------------------
// ECR: moto's GetAuthorizationToken (its SigV4 and IAM checks are covered by nullspace-oci's
// cloud_auth tests; here moto accepts any key).

#[tokio::test]
async fn ecr_base_image_auth_reaches_a_private_registry_through_buildkit() {
    require_tools(
        "ecr buildkit test",
        &[
            "moto_server",
            "docker-registry",
            "htpasswd",
            "skopeo",
            "debugfs",
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut moto = ProcessGuard::spawn(
        "moto_server",
        Command::new("moto_server").args(["-H", "127.0.0.1", "-p", &port.to_string()]),
        dir.path().join("moto.log"),
    );
    let moto_host = format!("127.0.0.1:{port}");
    moto.wait_until(&moto_host, "/moto-api/data.json", 200)
        .await;
    let moto_url = format!("http://{moto_host}/");
    // What moto's GetAuthorizationToken answers for its default account.
    let password = "123456789012-auth-token";
    let registry = private_registry(dir.path(), "AWS", password).await;
    let dockerfile = format!(
        "FROM {}/library/debian:bookworm\nRUN echo ok > /ok\n",
        registry.host
    );
    let secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYBUILDKITKEY";
    let env = Env::new();
    let good = Credentials::Ecr {
        access_key_id: "AKIAIOSFODNN7EXAMPLE".into(),
        secret_access_key: secret.into(),
        session_token: None,
        region: "us-east-1".into(),
        endpoint: Some(moto_url.clone()),
    };
    let outcome = env.build("ecr-private", &dockerfile, &good).await.unwrap();
    assert_eq!(cat(&outcome.rootfs_path, "/ok"), "ok\n");
    let config = env.driver.docker_configs.lock().unwrap()[0]
        .clone()
        .unwrap();
    assert_eq!(
        config_auth(&config, &registry.host),
        Some(format!("AWS:{password}"))
    );
    assert_eq!(
        serde_json::to_value(&outcome.template.build_config).unwrap()["base_image_auth_kind"],
        "ecr"
    );

    // An unreachable ECR endpoint fails before BuildKit, naming the endpoint.
    let down = Credentials::Ecr {
        access_key_id: "AKIAIOSFODNN7EXAMPLE".into(),
        secret_access_key: secret.into(),
        session_token: None,
        region: "us-east-1".into(),
        endpoint: Some(format!("http://127.0.0.1:{}/", free_port())),
    };
    let err = env.build("ecr-down", &dockerfile, &down).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("ecr token exchange") && msg.contains("failed"),
        "{msg}"
    );
    assert_eq!(env.driver.builds.load(Ordering::SeqCst), 1, "BuildKit ran");
    env.assert_no_secrets(
        &[msg, format!("{err:?}"), format!("{good:?}")],
        &[secret, password],
    );
}
