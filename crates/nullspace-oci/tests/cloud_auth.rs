//! Cloud registry credentials end to end: GCP service-account keys exchanged at a token
//! endpoint that verifies the signed JWT, AWS access keys exchanged by moto's ECR emulator
//! (with IAM signature checks on), and a real `docker-registry` behind htpasswd auth serving
//! an image pushed with skopeo, pulled through the providers.
//!
//! Needs `docker-registry`, `htpasswd`, `skopeo`, `gzip` and `openssl` (GCP) or `moto_server`
//! (AWS) on PATH; a test whose tools are missing fails, naming them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use nullspace_oci::auth::ecr::{EcrAuthRequest, EcrTokenProvider};
use nullspace_oci::{
    BlobStore, Credentials, Digest, Error, Platform, Reference, RegistryClient, RegistryConfig,
    RetryPolicy,
};
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------------
// Tools, processes, the registry and the image.

/// Whether `tool` is an executable on PATH.
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

    /// Waits until `url` answers with `status` (the process is serving).
    async fn wait_until(&mut self, url: &str, status: u16) {
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(exit)) = self.child.try_wait() {
                panic!(
                    "{} exited ({exit}): {}",
                    self.name,
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            if let Ok(r) = http.get(url).send().await {
                if r.status().as_u16() == status {
                    return;
                }
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

impl Drop for ProcessGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A CNCF `docker-registry` on 127.0.0.1 with htpasswd auth for one user.
struct Registry {
    host: String,
    _proc: ProcessGuard,
}

async fn start_registry(dir: &Path, user: &str, password: &str) -> Registry {
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
    proc.wait_until(&format!("http://{host}/v2/"), 401).await;
    Registry { host, _proc: proc }
}

/// The pushed image: its manifest and layer digests.
struct Pushed {
    manifest: Digest,
    layer: Digest,
}

/// Writes a one-layer OCI layout and pushes it to `registry` as `repo:tag` with skopeo.
fn push_image(dir: &Path, registry: &str, user: &str, password: &str, repo_tag: &str) -> Pushed {
    let layout = dir.join("layout");
    let blobs = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |bytes: &[u8]| {
        let d = Digest::sha256_of(bytes);
        std::fs::write(blobs.join(d.hex()), bytes).unwrap();
        json!({"digest": d.to_string(), "size": bytes.len()})
    };
    // The layer: a tar with one file, gzipped by gzip(1).
    let mut tar = tar::Builder::new(Vec::new());
    let content = b"hello from a private registry\n";
    let mut header = tar::Header::new_gnu();
    header.set_size(content.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_cksum();
    tar.append_data(&mut header, "hello.txt", &content[..])
        .unwrap();
    let tar = tar.into_inner().unwrap();
    let mut gz = Command::new("gzip")
        .args(["-n", "-c"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(gz.stdin.as_mut().unwrap(), &tar).unwrap();
    drop(gz.stdin.take());
    let layer = gz.wait_with_output().unwrap().stdout;
    let platform = Platform::host();
    let config = serde_json::to_vec(&json!({
        "architecture": platform.architecture,
        "os": platform.os,
        "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": [Digest::sha256_of(&tar).to_string()]},
    }))
    .unwrap();
    let mut config_desc = put(&config);
    config_desc["mediaType"] = json!("application/vnd.oci.image.config.v1+json");
    let mut layer_desc = put(&layer);
    layer_desc["mediaType"] = json!("application/vnd.oci.image.layer.v1.tar+gzip");
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config_desc,
        "layers": [layer_desc],
    }))
    .unwrap();
    let mut manifest_desc = put(&manifest);
    manifest_desc["mediaType"] = json!("application/vnd.oci.image.manifest.v1+json");
    manifest_desc["annotations"] = json!({"org.opencontainers.image.ref.name": "v1"});
    std::fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": [manifest_desc]})).unwrap(),
    )
    .unwrap();
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let out = Command::new("skopeo")
        .args([
            "--insecure-policy",
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
        ])
        .arg("--dest-creds")
        .arg(format!("{user}:{password}"))
        .arg(format!("oci:{}:v1", layout.display()))
        .arg(format!("docker://{registry}/{repo_tag}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo copy failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Pushed {
        manifest: Digest::sha256_of(&manifest),
        layer: Digest::sha256_of(&layer),
    }
}

/// Resolves `reference` and fetches every layer; checks them against `pushed`.
async fn pull(client: &RegistryClient, reference: &str, creds: &Credentials, pushed: &Pushed) {
    let r = Reference::parse(reference).unwrap();
    let img = client.resolve(&r, creds, &Platform::host()).await.unwrap();
    assert_eq!(img.manifest_digest, pushed.manifest);
    assert_eq!(img.layers().len(), 1);
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::new(dir.path()).unwrap();
    for l in img.layers() {
        assert_eq!(l.digest, pushed.layer);
        let path = client
            .fetch_blob(&img, l, creds, &store, &|_| {})
            .await
            .unwrap();
        assert_eq!(std::fs::metadata(path).unwrap().len(), l.size);
    }
}

/// Asserts that none of `secrets` appears in any of `texts`.
fn assert_no_secrets(texts: &[String], secrets: &[&str]) {
    for t in texts {
        for s in secrets {
            assert!(!s.is_empty());
            assert!(!t.contains(s), "a secret leaked into: {t}");
        }
    }
}

/// A client that gives up quickly on unreachable endpoints.
fn fast_client() -> RegistryClient {
    RegistryClient::with_retry(
        RegistryConfig::default(),
        RetryPolicy {
            max_attempts: 2,
            base_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(20),
        },
    )
    .unwrap()
}

/// Serves `app` on 127.0.0.1; returns `host:port`.
async fn serve(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr.to_string()
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

// ---------------------------------------------------------------------------------------------
// GCP.

/// An RSA key made by openssl: the PKCS#8 PEM and the PKCS#1 DER public key.
fn openssl_rsa_key(dir: &Path, name: &str) -> (String, Vec<u8>) {
    let pem = dir.join(format!("{name}.pem"));
    let der = dir.join(format!("{name}.pub.der"));
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
        .args(["rsa", "-RSAPublicKey_out", "-outform", "DER", "-in"])
        .arg(&pem)
        .arg("-out")
        .arg(&der)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(ok.success(), "openssl rsa failed");
    (
        std::fs::read_to_string(pem).unwrap(),
        std::fs::read(der).unwrap(),
    )
}

/// The test's OAuth2 token endpoint: verifies the assertion like Google's does.
struct TokenEndpoint {
    public_key: Vec<u8>,
    client_email: String,
    key_id: String,
    token_uri: Mutex<String>,
    access_token: String,
    exchanges: AtomicUsize,
    rejections: AtomicUsize,
}

fn oauth_error(description: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        [("content-type", "application/json")],
        json!({"error": "invalid_grant", "error_description": description}).to_string(),
    )
        .into_response()
}

fn verify_assertion(ep: &TokenEndpoint, body: &str) -> Result<(), &'static str> {
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
    let signature = b64.decode(s).map_err(|_| "Invalid JWT.")?;
    ring::signature::UnparsedPublicKey::new(
        &ring::signature::RSA_PKCS1_2048_8192_SHA256,
        &ep.public_key,
    )
    .verify(format!("{h}.{c}").as_bytes(), &signature)
    .map_err(|_| "Invalid JWT Signature.")?;
    let header: Value = serde_json::from_slice(&b64.decode(h).unwrap()).unwrap();
    let claims: Value = serde_json::from_slice(&b64.decode(c).unwrap()).unwrap();
    if header["alg"] != "RS256" || header["typ"] != "JWT" || header["kid"] != *ep.key_id {
        return Err("Invalid JWT header.");
    }
    let iat = claims["iat"].as_u64().ok_or("Missing iat.")?;
    let exp = claims["exp"].as_u64().ok_or("Missing exp.")?;
    let ok = claims["iss"] == *ep.client_email
        && claims["scope"] == "https://www.googleapis.com/auth/cloud-platform"
        && claims["aud"] == *ep.token_uri.lock().unwrap()
        && exp == iat + 3600
        && iat.abs_diff(now_secs()) <= 60;
    if ok {
        Ok(())
    } else {
        Err("Invalid JWT claims.")
    }
}

async fn token_handler(State(ep): State<Arc<TokenEndpoint>>, body: Bytes) -> Response {
    let body = String::from_utf8_lossy(&body);
    match verify_assertion(&ep, &body) {
        Ok(()) => {
            ep.exchanges.fetch_add(1, Ordering::SeqCst);
            (
                [("content-type", "application/json")],
                json!({"access_token": ep.access_token, "expires_in": 3599, "token_type": "Bearer"})
                    .to_string(),
            )
                .into_response()
        }
        Err(description) => {
            ep.rejections.fetch_add(1, Ordering::SeqCst);
            oauth_error(description)
        }
    }
}

fn key_json(email: &str, key_id: &str, pem: &str, token_uri: &str) -> String {
    json!({
        "type": "service_account",
        "project_id": "nullspace-test",
        "private_key_id": key_id,
        "private_key": pem,
        "client_email": email,
        "client_id": "1234567890",
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": token_uri,
    })
    .to_string()
}

/// A distinctive piece of a PEM's base64 body.
fn pem_fragment(pem: &str) -> String {
    pem.lines().nth(5).unwrap().to_owned()
}

#[tokio::test]
async fn gcp_service_account_pulls_from_a_registry_and_bad_keys_fail_clearly() {
    require_tools(
        "gcp test",
        &["docker-registry", "htpasswd", "skopeo", "gzip", "openssl"],
    );
    let dir = tempfile::tempdir().unwrap();
    let (pem, public_key) = openssl_rsa_key(dir.path(), "sa");
    let (other_pem, _) = openssl_rsa_key(dir.path(), "other");
    let email = "puller@nullspace-test.iam.gserviceaccount.com";
    let access_token = format!("ya29.test-{}", now_secs());
    let ep = Arc::new(TokenEndpoint {
        public_key,
        client_email: email.to_owned(),
        key_id: "0123456789abcdef".to_owned(),
        token_uri: Mutex::new(String::new()),
        access_token: access_token.clone(),
        exchanges: AtomicUsize::new(0),
        rejections: AtomicUsize::new(0),
    });
    let token_host = serve(
        axum::Router::new()
            .route("/token", axum::routing::post(token_handler))
            .with_state(ep.clone()),
    )
    .await;
    let token_uri = format!("http://{token_host}/token");
    *ep.token_uri.lock().unwrap() = token_uri.clone();

    let registry = start_registry(dir.path(), "oauth2accesstoken", &access_token).await;
    let pushed = push_image(
        dir.path(),
        &registry.host,
        "oauth2accesstoken",
        &access_token,
        "proj/app:v1",
    );
    let reference = format!("{}/proj/app:v1", registry.host);
    let client = fast_client();
    let mut texts = Vec::new();

    // A good key: resolve and fetch through the provider; one exchange serves every request.
    let good = Credentials::gcp(key_json(email, "0123456789abcdef", &pem, &token_uri));
    assert_eq!(good.kind(), "gcp");
    pull(&client, &reference, &good, &pushed).await;
    pull(&client, &reference, &good, &pushed).await;
    assert_eq!(
        ep.exchanges.load(Ordering::SeqCst),
        1,
        "the token is cached"
    );
    let exchanged = client
        .exchange_credentials(&good, &registry.host)
        .await
        .unwrap();
    assert_eq!(
        exchanged,
        Credentials::basic("oauth2accesstoken", access_token.clone())
    );
    texts.push(format!("{good:?}"));
    texts.push(format!("{exchanged:?}"));
    texts.push(format!("{client:?}"));

    // Without credentials the registry refuses.
    let err = client
        .resolve(
            &Reference::parse(&reference).unwrap(),
            &Credentials::Anonymous,
            &Platform::host(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::AuthRejected { .. }), "{err}");

    // A tampered key (another private key under the same e-mail and key id): the endpoint's
    // signature check fails, and the cached token of the good key is not reused.
    let tampered = Credentials::gcp(key_json(email, "0123456789abcdef", &other_pem, &token_uri));
    let err = client
        .resolve(
            &Reference::parse(&reference).unwrap(),
            &tampered,
            &Platform::host(),
        )
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::CloudAuth(_)), "{msg}");
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
    assert_eq!(ep.rejections.load(Ordering::SeqCst), 1);
    texts.push(msg);
    texts.push(format!("{err:?}"));

    // Malformed keys fail before anything is sent.
    let broken_pem = pem.replacen("MII", "MIX", 1);
    let malformed = [
        ("{\"type\": \"service_account\",".to_owned(), "not valid json"),
        (
            json!({"type": "service_account", "client_email": email, "private_key_id": "k", "token_uri": token_uri}).to_string(),
            "missing field \"private_key\"",
        ),
        (
            key_json(email, "k", &broken_pem, &token_uri),
            "not a usable rsa private key",
        ),
        (
            key_json(email, "k", &pem, "not a url"),
            "token_uri",
        ),
    ];
    let before = ep.rejections.load(Ordering::SeqCst) + ep.exchanges.load(Ordering::SeqCst);
    for (json, want) in malformed {
        let creds = Credentials::gcp(json);
        let err = client
            .resolve(
                &Reference::parse(&reference).unwrap(),
                &creds,
                &Platform::host(),
            )
            .await
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("gcp service account key"), "{msg}");
        assert!(msg.contains(want), "{msg} (wanted {want})");
        texts.push(msg);
        texts.push(format!("{err:?}"));
        texts.push(format!("{creds:?}"));
    }
    assert_eq!(
        ep.rejections.load(Ordering::SeqCst) + ep.exchanges.load(Ordering::SeqCst),
        before,
        "malformed keys never reach the token endpoint"
    );

    // A token endpoint that is down.
    let down = Credentials::gcp(key_json(
        email,
        "0123456789abcdef",
        &pem,
        &format!("http://127.0.0.1:{}/token", free_port()),
    ));
    let err = client
        .exchange_credentials(&down, &registry.host)
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("gcp token exchange") && msg.contains("failed"),
        "{msg}"
    );
    texts.push(msg);

    // A token endpoint over plain http elsewhere than loopback is refused.
    let insecure = Credentials::gcp(key_json(
        email,
        "0123456789abcdef",
        &pem,
        "http://oauth2.example.com/token",
    ));
    let err = client
        .exchange_credentials(&insecure, &registry.host)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InsecureNotAllowed { .. }), "{err}");

    assert_no_secrets(
        &texts,
        &[
            &pem_fragment(&pem),
            &pem_fragment(&other_pem),
            &access_token,
        ],
    );
}

// ---------------------------------------------------------------------------------------------
// AWS.

/// `application/x-www-form-urlencoded` encoding of one value.
fn form_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A Query-protocol IAM call to moto (sent before IAM authentication is switched on; signed
/// with throw-away keys so moto routes it to IAM).
async fn iam_call(moto: &str, params: &[(&str, &str)]) -> String {
    let body: String = params
        .iter()
        .chain([("Version", "2010-05-08")].iter())
        .map(|(k, v)| format!("{k}={}", form_encode(v)))
        .collect::<Vec<_>>()
        .join("&");
    let resp = reqwest::Client::new()
        .post(format!("http://{moto}/"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header(
            "authorization",
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20240101/us-east-1/iam/aws4_request, SignedHeaders=host, Signature=0",
        )
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let text = resp.text().await.unwrap();
    assert!(status.is_success(), "iam {params:?}: {status}: {text}");
    text
}

fn xml_value(xml: &str, tag: &str) -> String {
    let open = format!("<{tag}>");
    let start = xml.find(&open).unwrap() + open.len();
    let end = xml[start..].find(&format!("</{tag}>")).unwrap();
    xml[start..start + end].to_owned()
}

/// moto_server with an IAM user allowed `ecr:GetAuthorizationToken`, and IAM authentication
/// (SigV4 signature checks) switched on. Returns the server, its host and the user's keys.
async fn start_moto(dir: &Path) -> (ProcessGuard, String, String, String) {
    let port = free_port();
    let mut proc = ProcessGuard::spawn(
        "moto_server",
        Command::new("moto_server").args(["-H", "127.0.0.1", "-p", &port.to_string()]),
        dir.join("moto.log"),
    );
    let host = format!("127.0.0.1:{port}");
    proc.wait_until(&format!("http://{host}/moto-api/data.json"), 200)
        .await;
    iam_call(&host, &[("Action", "CreateUser"), ("UserName", "puller")]).await;
    let created = iam_call(
        &host,
        &[("Action", "CreateAccessKey"), ("UserName", "puller")],
    )
    .await;
    let access_key_id = xml_value(&created, "AccessKeyId");
    let secret = xml_value(&created, "SecretAccessKey");
    let policy = json!({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "ecr:GetAuthorizationToken", "Resource": "*"}],
    })
    .to_string();
    iam_call(
        &host,
        &[
            ("Action", "PutUserPolicy"),
            ("UserName", "puller"),
            ("PolicyName", "pull"),
            ("PolicyDocument", &policy),
        ],
    )
    .await;
    let resp = reqwest::Client::new()
        .post(format!("http://{host}/moto-api/reset-auth"))
        .body("0")
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "moto reset-auth failed");
    (proc, host, access_key_id, secret)
}

fn ecr_creds(key: &str, secret: &str, region: &str, endpoint: &str) -> Credentials {
    Credentials::Ecr {
        access_key_id: key.to_owned(),
        secret_access_key: secret.to_owned(),
        session_token: None,
        region: region.to_owned(),
        endpoint: Some(endpoint.to_owned()),
    }
}

#[tokio::test]
async fn ecr_access_key_pulls_from_a_registry_through_moto() {
    require_tools(
        "ecr test",
        &[
            "moto_server",
            "docker-registry",
            "htpasswd",
            "skopeo",
            "gzip",
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let (_moto, moto_host, key, secret) = start_moto(dir.path()).await;
    let moto_url = format!("http://{moto_host}/");
    let client = fast_client();
    let mut texts = Vec::new();

    // The exchange itself: moto checks the SigV4 signature against the user's secret.
    let good = ecr_creds(&key, &secret, "us-east-1", &moto_url);
    assert_eq!(good.kind(), "ecr");
    let exchanged = client
        .exchange_credentials(&good, "127.0.0.1:5000")
        .await
        .unwrap();
    let Credentials::Basic { username, password } = &exchanged else {
        panic!("not basic: {exchanged:?}");
    };
    assert_eq!(username, "AWS");
    assert_eq!(password, "123456789012-auth-token");
    let password = password.clone();
    texts.push(format!("{good:?}"));
    texts.push(format!("{exchanged:?}"));

    // The provider on its own reports what moto sent.
    let provider = EcrTokenProvider::new(
        reqwest::Client::new(),
        RegistryConfig::default(),
        RetryPolicy::default(),
    );
    let request = EcrAuthRequest::from_credentials(&good).unwrap();
    let auth = provider.authorization_token(&request).await.unwrap();
    assert_eq!(auth.username(), "AWS");
    assert_eq!(
        auth.proxy_endpoint(),
        Some("https://123456789012.dkr.ecr.us-east-1.amazonaws.com")
    );
    texts.push(format!("{auth:?}"));
    texts.push(format!("{request:?}"));

    // A real registry behind AWS / <password>: resolve and fetch through the provider.
    let registry = start_registry(dir.path(), "AWS", &password).await;
    let pushed = push_image(dir.path(), &registry.host, "AWS", &password, "team/app:v1");
    pull(
        &client,
        &format!("{}/team/app:v1", registry.host),
        &good,
        &pushed,
    )
    .await;

    // A wrong secret: moto's signature check refuses it.
    let wrong_secret = format!("{secret}x");
    let err = client
        .exchange_credentials(&ecr_creds(&key, &wrong_secret, "us-east-1", &moto_url), "h")
        .await
        .unwrap_err();
    let msg = err.to_string();
    for want in [
        "ecr token exchange",
        "us-east-1",
        &moto_url,
        "http 403",
        "SignatureDoesNotMatch",
    ] {
        assert!(msg.contains(want), "{msg} (wanted {want})");
    }
    texts.push(msg);
    texts.push(format!("{err:?}"));

    // An unknown access key.
    let err = client
        .exchange_credentials(
            &ecr_creds("AKIAUNKNOWNKEY000000", &secret, "us-east-1", &moto_url),
            "h",
        )
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("http 403") && msg.contains("InvalidClientTokenId"),
        "{msg}"
    );
    texts.push(msg);

    assert_no_secrets(&texts, &[&secret, &wrong_secret, &password]);
}

/// An ECR API of our own: answers with a fixed status, headers and body; counts calls.
async fn fake_ecr(
    status: StatusCode,
    headers: Vec<(&'static str, String)>,
    body: Value,
) -> (String, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let app = axum::Router::new().fallback(move |req_headers: HeaderMap| {
        let headers = headers.clone();
        let body = body.clone();
        let counter = counter.clone();
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            assert_eq!(
                req_headers.get("x-amz-target").unwrap(),
                "AmazonEC2ContainerRegistry_V20150921.GetAuthorizationToken"
            );
            assert!(req_headers
                .get("authorization")
                .unwrap()
                .to_str()
                .unwrap()
                .contains("/eu-west-1/ecr/aws4_request"));
            let mut resp = (status, body.to_string()).into_response();
            for (k, v) in headers {
                resp.headers_mut().insert(k, v.parse().unwrap());
            }
            resp
        }
    });
    (format!("http://{}/", serve(app).await), calls)
}

#[tokio::test]
async fn ecr_errors_are_clear_and_tokens_cached_until_expiry() {
    let client = fast_client();
    let secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
    let key = "AKIAIOSFODNN7EXAMPLE";
    let mut texts = Vec::new();

    // Rejected with an AWS error body and header.
    let (url, _) = fake_ecr(
        StatusCode::FORBIDDEN,
        vec![(
            "x-amzn-errortype",
            "UnrecognizedClientException:http://internal.amazon.com/coral/com.amazon.coral.service/".into(),
        )],
        json!({"__type": "com.amazon.coral.service#UnrecognizedClientException", "message": "The security token included in the request is invalid."}),
    )
    .await;
    let err = client
        .exchange_credentials(&ecr_creds(key, secret, "eu-west-1", &url), "h")
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert_eq!(
        msg,
        format!(
            "ecr token exchange (region eu-west-1, access key {key}) at {url} was rejected: \
             http 403: UnrecognizedClientException: The security token included in the request \
             is invalid."
        )
    );
    texts.push(msg);

    // Rejected with only a body.
    let (url, _) = fake_ecr(
        StatusCode::BAD_REQUEST,
        vec![],
        json!({"__type": "AccessDeniedException", "Message": "not allowed"}),
    )
    .await;
    let msg = client
        .exchange_credentials(&ecr_creds(key, secret, "eu-west-1", &url), "h")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        msg.ends_with("http 400: AccessDeniedException: not allowed"),
        "{msg}"
    );
    texts.push(msg);

    // A password valid for an hour is cached; a registry refusing it drops it from the cache.
    let token_password = "eyJwYXlsb2FkIjoiZmFrZSJ9";
    let token = base64::engine::general_purpose::STANDARD.encode(format!("AWS:{token_password}"));
    let (url, calls) = fake_ecr(
        StatusCode::OK,
        vec![],
        json!({"authorizationData": [{"authorizationToken": token, "expiresAt": now_secs() as f64 + 3600.5, "proxyEndpoint": "https://1.dkr.ecr.eu-west-1.amazonaws.com"}]}),
    )
    .await;
    let creds = ecr_creds(key, secret, "eu-west-1", &url);
    for _ in 0..3 {
        let c = client.exchange_credentials(&creds, "h").await.unwrap();
        assert_eq!(c, Credentials::basic("AWS", token_password));
        texts.push(format!("{c:?}"));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // Another secret under the same key id is another cache entry.
    let other = ecr_creds(key, "another-secret", "eu-west-1", &url);
    client.exchange_credentials(&other, "h").await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    // A registry that refuses the password: the next pull exchanges again.
    let refusing = refusing_registry().await;
    let r = Reference::parse(&format!("{refusing}/team/app:v1")).unwrap();
    let err = client
        .resolve(&r, &creds, &Platform::host())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::AuthRejected { .. }), "{err}");
    client.exchange_credentials(&creds, "h").await.unwrap();
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "refused password was forgotten"
    );

    // Garbage instead of a token.
    let (url, _) = fake_ecr(
        StatusCode::OK,
        vec![],
        json!({"authorizationData": [{"authorizationToken": "%%%not base64"}]}),
    )
    .await;
    let msg = client
        .exchange_credentials(&ecr_creds(key, secret, "eu-west-1", &url), "h")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("invalid response: authorizationToken is not base64"),
        "{msg}"
    );
    texts.push(msg);

    // Malformed region: refused before anything is sent.
    let err = client
        .exchange_credentials(&ecr_creds(key, secret, "us-east", &url), "h")
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "ecr credentials: invalid region: \"us-east\" is not an aws region (expected one like \"us-east-1\")"
    );
    // A region other than the registry's.
    let err = client
        .exchange_credentials(
            &Credentials::ecr(key, secret, "us-east-1"),
            "123456789012.dkr.ecr.eu-west-1.amazonaws.com",
        )
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "ecr credentials are for region us-east-1 but registry \
         123456789012.dkr.ecr.eu-west-1.amazonaws.com is in region eu-west-1; use region eu-west-1"
    );
    // An unreachable endpoint.
    let dead = format!("http://127.0.0.1:{}/", free_port());
    let msg = client
        .exchange_credentials(&ecr_creds(key, secret, "eu-west-1", &dead), "h")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        msg.starts_with(&format!(
            "ecr token exchange (region eu-west-1, access key {key}) at {dead} failed: "
        )),
        "{msg}"
    );
    texts.push(msg);
    // Plain http to a host that is not loopback.
    let err = client
        .exchange_credentials(
            &ecr_creds(key, secret, "eu-west-1", "http://ecr.example.com/"),
            "h",
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InsecureNotAllowed { .. }), "{err}");

    assert_no_secrets(&texts, &[secret, token_password, &token]);
}

/// A registry that answers every request with 401 and a basic challenge.
async fn refusing_registry() -> String {
    serve(axum::Router::new().fallback(|| async {
        (
            StatusCode::UNAUTHORIZED,
            [("www-authenticate", "Basic realm=\"test\"")],
        )
            .into_response()
    }))
    .await
}
