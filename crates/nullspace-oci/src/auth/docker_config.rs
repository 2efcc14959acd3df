//! Fallback credentials from Docker's `config.json`: `credHelpers`, `credsStore` and `auths`.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde::Deserialize;
use tokio::io::AsyncWriteExt;

use crate::auth::{basic, Credentials};
use crate::error::Error;
use crate::reference::{normalize_registry, DOCKER_HUB};

/// The key Docker uses for Docker Hub in `auths` and with credential helpers.
pub const DOCKER_HUB_AUTH_KEY: &str = "https://index.docker.io/v1/";

const HELPER_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConfigFile {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(default)]
    creds_store: Option<String>,
    #[serde(default)]
    cred_helpers: BTreeMap<String, String>,
}

#[derive(Default, Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

impl std::fmt::Debug for AuthEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuthEntry(<redacted>)")
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HelperOutput {
    #[serde(default)]
    username: String,
    #[serde(default)]
    secret: String,
}

/// Normalises an `auths` key or registry name to a host (`https://index.docker.io/v1/` →
/// `docker.io`).
pub fn key_host(key: &str) -> String {
    let k = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    normalize_registry(k.split('/').next().unwrap_or(k))
}

/// Looks up credentials for `registry` (a normalised host such as `docker.io` or
/// `localhost:5000`) in the config file at `path`. A missing file means no credentials.
pub async fn lookup(path: &Path, registry: &str) -> Result<Option<Credentials>, Error> {
    let registry = normalize_registry(registry);
    let fail = |reason: String| Error::DockerCredentials {
        registry: registry.clone(),
        reason,
    };
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(fail(format!("reading {}: {e}", path.display()))),
    };
    let config: ConfigFile = serde_json::from_slice(&text)
        .map_err(|e| fail(format!("parsing {}: {e}", path.display())))?;
    let server_url = if registry == DOCKER_HUB {
        DOCKER_HUB_AUTH_KEY.to_owned()
    } else {
        registry.clone()
    };
    if let Some((_, helper)) = config
        .cred_helpers
        .iter()
        .find(|(k, _)| key_host(k) == registry)
    {
        return run_helper(helper, &server_url, &registry).await;
    }
    if let Some(entry) = config
        .auths
        .iter()
        .find(|(k, _)| key_host(k) == registry)
        .map(|(_, v)| v)
    {
        if let Some(auth) = entry.auth.as_deref().filter(|a| !a.is_empty()) {
            let (u, p) = basic::decode_auth_field(auth)
                .ok_or_else(|| fail(format!("malformed auth field in {}", path.display())))?;
            return Ok(Some(Credentials::basic(u, p)));
        }
        if let (Some(u), Some(p)) = (&entry.username, &entry.password) {
            return Ok(Some(Credentials::basic(u.clone(), p.clone())));
        }
    }
    if let Some(store) = config.creds_store.as_deref().filter(|s| !s.is_empty()) {
        return run_helper(store, &server_url, &registry).await;
    }
    Ok(None)
}

/// Runs `docker-credential-<helper> get` with `server_url` on stdin.
async fn run_helper(
    helper: &str,
    server_url: &str,
    registry: &str,
) -> Result<Option<Credentials>, Error> {
    let fail = |reason: String| Error::DockerCredentials {
        registry: registry.to_owned(),
        reason,
    };
    if helper.is_empty()
        || !helper
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(fail(format!("invalid credential helper name {helper:?}")));
    }
    let program = format!("docker-credential-{helper}");
    let mut child = tokio::process::Command::new(&program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| fail(format!("running {program}: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(server_url.as_bytes())
            .await
            .map_err(|e| fail(format!("writing to {program}: {e}")))?;
    }
    let out = tokio::time::timeout(HELPER_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| fail(format!("{program} timed out")))?
        .map_err(|e| fail(format!("running {program}: {e}")))?;
    if !out.status.success() {
        let msg = String::from_utf8_lossy(&out.stdout);
        if msg.contains("credentials not found") {
            return Ok(None);
        }
        // Helpers print their error on stdout; it holds no secret.
        let msg: String = msg.trim().chars().take(200).collect();
        return Err(fail(format!("{program} failed ({}): {msg}", out.status)));
    }
    let parsed: HelperOutput = serde_json::from_slice(&out.stdout).map_err(|_| {
        fail(format!(
            "{program} printed something other than credentials json"
        ))
    })?;
    if parsed.secret.is_empty() {
        return Ok(None);
    }
    Ok(Some(Credentials::basic(parsed.username, parsed.secret)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    #[test]
    fn key_hosts() {
        assert_eq!(key_host(DOCKER_HUB_AUTH_KEY), "docker.io");
        assert_eq!(key_host("https://127.0.0.1:5001"), "127.0.0.1:5001");
        assert_eq!(key_host("ghcr.io"), "ghcr.io");
    }

    #[tokio::test]
    async fn reads_auths_and_misses() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        let auth = base64::engine::general_purpose::STANDARD.encode("nullspace:pw");
        std::fs::write(
            &path,
            format!(r#"{{"auths":{{"https://index.docker.io/v1/":{{"auth":"{auth}"}},"127.0.0.1:5001":{{"auth":"{auth}"}}}}}}"#),
        )
        .unwrap();
        assert_eq!(
            lookup(&path, "docker.io").await.unwrap(),
            Some(Credentials::basic("nullspace", "pw"))
        );
        assert_eq!(
            lookup(&path, "127.0.0.1:5001").await.unwrap(),
            Some(Credentials::basic("nullspace", "pw"))
        );
        assert_eq!(lookup(&path, "ghcr.io").await.unwrap(), None);
        assert_eq!(
            lookup(&dir.path().join("none.json"), "ghcr.io")
                .await
                .unwrap(),
            None
        );
    }

    #[tokio::test]
    async fn runs_credential_helpers() {
        let dir = tempfile::tempdir().unwrap();
        let helper = dir.path().join("docker-credential-nstest");
        std::fs::write(
            &helper,
            "#!/bin/sh\nread url\nif [ \"$url\" = \"ghcr.io\" ]; then echo '{\"ServerURL\":\"ghcr.io\",\"Username\":\"u\",\"Secret\":\"s\"}'; else echo 'credentials not found in native keychain'; exit 1; fi\n",
        )
        .unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let path = dir.path().join("config.json");
        std::fs::write(
            &path,
            r#"{"credHelpers":{"ghcr.io":"nstest","quay.io":"nstest"}}"#,
        )
        .unwrap();
        let old = std::env::var_os("PATH").unwrap_or_default();
        let mut paths = vec![dir.path().to_path_buf()];
        paths.extend(std::env::split_paths(&old));
        // Only this test touches PATH's first entry; other tests do not spawn helpers.
        std::env::set_var("PATH", std::env::join_paths(paths).unwrap());
        assert_eq!(
            lookup(&path, "ghcr.io").await.unwrap(),
            Some(Credentials::basic("u", "s"))
        );
        assert_eq!(lookup(&path, "quay.io").await.unwrap(), None);
    }
}
