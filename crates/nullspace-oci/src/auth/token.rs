//! The bearer token flow of the distribution spec, and a cache of issued tokens.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use reqwest::Url;
use serde::Deserialize;

use crate::auth::{basic, Credentials};
use crate::error::Error;
/// Largest token, GCP or ECR response read (real ones are a few KiB).
pub(crate) const MAX_TOKEN_RESPONSE_BYTES: u64 = 1 << 20;

use crate::registry_config::{check_url, RegistryConfig};

/// Tokens issued without `expires_in` live this long (the spec's default).
const DEFAULT_LIFETIME: Duration = Duration::from_secs(60);
/// Tokens are dropped this long before they expire.
const MARGIN: Duration = Duration::from_secs(5);

#[derive(Deserialize)]
struct TokenResponse {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
}

/// Issued tokens keyed by (registry host, scope), kept until they expire.
#[derive(Default)]
pub struct TokenCache {
    tokens: Mutex<HashMap<(String, String), (String, Instant)>>,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenCache(<redacted>)")
    }
}

impl TokenCache {
    /// A valid cached token for (`host`, `scope`).
    pub fn get(&self, host: &str, scope: &str) -> Option<String> {
        let mut map = self.tokens.lock().ok()?;
        let key = (host.to_owned(), scope.to_owned());
        match map.get(&key) {
            Some((t, until)) if *until > Instant::now() => Some(t.clone()),
            Some(_) => {
                map.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Stores a token valid for `lifetime`.
    pub fn put(&self, host: &str, scope: &str, token: String, lifetime: Duration) {
        if let Ok(mut map) = self.tokens.lock() {
            let until =
                Instant::now() + lifetime.saturating_sub(MARGIN).max(Duration::from_secs(1));
            map.insert((host.to_owned(), scope.to_owned()), (token, until));
        }
    }

    /// Forgets the token for (`host`, `scope`) (after the registry refused it).
    pub fn remove(&self, host: &str, scope: &str) {
        if let Ok(mut map) = self.tokens.lock() {
            map.remove(&(host.to_owned(), scope.to_owned()));
        }
    }
}

/// What the registry asked for in its `Bearer` challenge.
#[derive(Debug, Clone)]
pub struct TokenRequest<'a> {
    /// Registry host (for messages).
    pub registry: &'a str,
    /// Token server URL.
    pub realm: &'a str,
    /// `service`.
    pub service: Option<&'a str>,
    /// `scope`.
    pub scope: &'a str,
}

/// Asks the token server for a token (anonymously, or with basic credentials), returning it
/// with its lifetime.
pub async fn fetch(
    http: &reqwest::Client,
    config: &RegistryConfig,
    req: &TokenRequest<'_>,
    credentials: &Credentials,
) -> Result<(String, Duration), Error> {
    let fail = |reason: String| Error::Token {
        registry: req.registry.to_owned(),
        realm: req.realm.to_owned(),
        reason,
    };
    let mut url = Url::parse(req.realm).map_err(|e| fail(format!("invalid realm: {e}")))?;
    // Credentials go to the realm only over https (or plain http to loopback/insecure hosts).
    check_url(config, &url)?;
    {
        let mut q = url.query_pairs_mut();
        if let Some(s) = req.service {
            q.append_pair("service", s);
        }
        if !req.scope.is_empty() {
            q.append_pair("scope", req.scope);
        }
    }
    let mut builder = http.get(url);
    if let Credentials::Basic { username, password } = credentials {
        builder = builder.header(
            reqwest::header::AUTHORIZATION,
            basic::header_value(username, password),
        );
    }
    let resp = builder
        .send()
        .await
        .map_err(|e| fail(e.without_url().to_string()))?;
    let status = resp.status().as_u16();
    if status == 401 || status == 403 {
        return Err(Error::AuthRejected {
            registry: req.registry.to_owned(),
            status,
            hint: if credentials.is_anonymous() {
                "; no credentials were given".to_owned()
            } else {
                String::new()
            },
        });
    }
    if !(200..300).contains(&status) {
        return Err(fail(format!("http status {status}")));
    }
    let body = crate::http_body::read_limited(
        resp,
        MAX_TOKEN_RESPONSE_BYTES,
        req.registry,
        "token response",
    )
    .await
    .map_err(|e| fail(e.to_string()))?;
    let parsed: TokenResponse =
        serde_json::from_slice(&body).map_err(|e| fail(format!("invalid token response: {e}")))?;
    let token = parsed
        .token
        .filter(|t| !t.is_empty())
        .or(parsed.access_token.filter(|t| !t.is_empty()))
        .ok_or_else(|| fail("response has neither token nor access_token".to_owned()))?;
    let lifetime = parsed
        .expires_in
        .filter(|s| *s > 0)
        .map_or(DEFAULT_LIFETIME, Duration::from_secs);
    Ok((token, lifetime))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_expires() {
        let c = TokenCache::default();
        c.put("h", "s", "t".into(), Duration::from_secs(60));
        assert_eq!(c.get("h", "s").as_deref(), Some("t"));
        assert_eq!(c.get("h", "other"), None);
        c.remove("h", "s");
        assert_eq!(c.get("h", "s"), None);
        c.put("h", "s", "t".into(), Duration::from_secs(0));
        std::thread::sleep(Duration::from_millis(1100));
        assert_eq!(c.get("h", "s"), None);
    }
}
