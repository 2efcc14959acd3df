//! GCP Artifact Registry (and Container Registry): a service-account key is exchanged for an
//! OAuth2 access token (a JWT bearer grant, RFC 7523, signed RS256), which registries accept
//! as the password of the user [`USERNAME`].
//!
//! ```text
//! key JSON ──► JWT {iss: client_email, scope: cloud-platform, aud: token_uri, iat, exp}
//!          ──► POST token_uri (grant_type=jwt-bearer, assertion=JWT)
//!          ──► {access_token, expires_in} ──► Basic oauth2accesstoken:<access_token>
//! ```
//!
//! Tokens are cached per key (a hash of its e-mail, key id, private key and token URI) until
//! [`super::cloud::REFRESH_MARGIN`] before they expire.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use reqwest::header::{ACCEPT, CONTENT_TYPE};
use reqwest::Url;
use ring::rand::SystemRandom;
use ring::signature::{RsaKeyPair, RSA_PKCS1_SHA256};
use serde_json::{json, Map, Value};
use sha2::{Digest as _, Sha256};

use super::cloud::{self, CloudAuthError, ExchangeCache};
use crate::auth::Credentials;
use crate::error::Error;
use crate::registry_config::{check_url, RegistryConfig};
use crate::retry::RetryPolicy;

/// The registry user name that goes with an OAuth2 access token.
pub const USERNAME: &str = "oauth2accesstoken";
/// The OAuth2 scope requested: registries need `cloud-platform`.
pub const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
/// Google's token endpoint, used when a key has no `token_uri`.
pub const DEFAULT_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";
/// The lifetime asked for in the JWT (`exp - iat`), the most Google allows.
pub const ASSERTION_LIFETIME: Duration = Duration::from_secs(3600);
/// The grant type of the exchange (RFC 7523).
pub const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// A token lifetime assumed when the endpoint does not say (`expires_in` missing).
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);

/// The plain fields of a service-account key file, read without touching the private key.
struct KeyFields {
    client_email: String,
    private_key_id: String,
    private_key: String,
    token_uri: String,
}

impl KeyFields {
    fn parse(json: &str) -> Result<KeyFields, CloudAuthError> {
        let invalid = |email: Option<&str>, reason: String| CloudAuthError::InvalidGcpKey {
            client_email: email.map(str::to_owned),
            reason,
        };
        // Parsed as a `Value` first: serde's messages for a mistyped struct can quote values.
        let value: Value =
            serde_json::from_str(json).map_err(|e| invalid(None, cloud::json_error(&e)))?;
        let Value::Object(obj) = value else {
            return Err(invalid(None, "not a json object".to_owned()));
        };
        let email = str_field(&obj, "client_email")
            .map_err(|r| invalid(None, r))?
            .filter(|e| !e.is_empty());
        let email_ref = email.as_deref();
        let field = |name: &str| str_field(&obj, name).map_err(|r| invalid(email_ref, r));
        match field("type")?.as_deref() {
            None | Some("service_account") => {}
            Some(other) => {
                return Err(invalid(
                    email_ref,
                    format!(
                        "type is {other:?}, expected \"service_account\" (create a key for a \
                         service account in the iam console)"
                    ),
                ))
            }
        }
        let required = |name: &'static str| -> Result<String, CloudAuthError> {
            field(name)?
                .filter(|v| !v.trim().is_empty())
                .ok_or_else(|| invalid(email_ref, format!("missing field {name:?}")))
        };
        let client_email = required("client_email")?;
        let private_key = required("private_key")?;
        let private_key_id = required("private_key_id")?;
        let token_uri = field("token_uri")?
            .filter(|v| !v.trim().is_empty())
            .unwrap_or_else(|| DEFAULT_TOKEN_URI.to_owned());
        Url::parse(&token_uri)
            .map_err(|e| invalid(email_ref, format!("token_uri {token_uri:?}: {e}")))?;
        Ok(KeyFields {
            client_email,
            private_key_id,
            private_key,
            token_uri,
        })
    }

    /// The cache key: everything that decides which token the exchange yields.
    fn identity(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        for part in [
            "gcp",
            &self.client_email,
            &self.private_key_id,
            &self.private_key,
            &self.token_uri,
            SCOPE,
        ] {
            h.update(part.as_bytes());
            h.update([0]);
        }
        h.finalize().into()
    }
}

/// A string field of a JSON object: absent (or null) is `None`, any other type an error.
fn str_field(obj: &Map<String, Value>, name: &str) -> Result<Option<String>, String> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(format!("field {name:?} is not a string")),
    }
}

/// A parsed GCP service-account key. `Debug` shows the e-mail and key id only.
pub struct ServiceAccountKey {
    client_email: String,
    private_key_id: String,
    token_uri: String,
    key_pair: RsaKeyPair,
}

impl fmt::Debug for ServiceAccountKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceAccountKey")
            .field("client_email", &self.client_email)
            .field("private_key_id", &self.private_key_id)
            .field("token_uri", &self.token_uri)
            .field("private_key", &"<redacted>")
            .finish()
    }
}

impl ServiceAccountKey {
    /// Parses a key file as downloaded from the IAM console (`type`, `client_email`,
    /// `private_key` as PEM PKCS#8 or PKCS#1 RSA, `private_key_id`, `token_uri`).
    pub fn from_json(json: &str) -> Result<ServiceAccountKey, CloudAuthError> {
        let fields = KeyFields::parse(json)?;
        let invalid = |reason: String| CloudAuthError::InvalidGcpKey {
            client_email: Some(fields.client_email.clone()),
            reason,
        };
        let (label, der) =
            pem_decode(&fields.private_key).map_err(|r| invalid(format!("private_key: {r}")))?;
        let key_pair = match label.as_str() {
            "PRIVATE KEY" => RsaKeyPair::from_pkcs8(&der),
            "RSA PRIVATE KEY" => RsaKeyPair::from_der(&der),
            other => {
                return Err(invalid(format!(
                    "private_key: pem block is {other:?}, expected \"PRIVATE KEY\" (an rsa key)"
                )))
            }
        }
        .map_err(|e| invalid(format!("private_key: not a usable rsa private key ({e})")))?;
        Ok(ServiceAccountKey {
            client_email: fields.client_email,
            private_key_id: fields.private_key_id,
            token_uri: fields.token_uri,
            key_pair,
        })
    }

    /// The service account's e-mail (`iss` of the assertion).
    pub fn client_email(&self) -> &str {
        &self.client_email
    }

    /// The key's id (`kid` of the assertion).
    pub fn private_key_id(&self) -> &str {
        &self.private_key_id
    }

    /// The token endpoint (`aud` of the assertion).
    pub fn token_uri(&self) -> &str {
        &self.token_uri
    }

    /// The signed JWT (RS256) asserting this service account at `issued_at`, valid for
    /// [`ASSERTION_LIFETIME`].
    pub fn assertion(&self, issued_at: SystemTime) -> Result<String, CloudAuthError> {
        let iat = issued_at
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let header = json!({"alg": "RS256", "typ": "JWT", "kid": self.private_key_id});
        let claims = json!({
            "iss": self.client_email,
            "scope": SCOPE,
            "aud": self.token_uri,
            "iat": iat,
            "exp": iat + ASSERTION_LIFETIME.as_secs(),
        });
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let signing_input = format!(
            "{}.{}",
            b64.encode(header.to_string()),
            b64.encode(claims.to_string())
        );
        let mut signature = vec![0; self.key_pair.public().modulus_len()];
        self.key_pair
            .sign(
                &RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                signing_input.as_bytes(),
                &mut signature,
            )
            .map_err(|_| CloudAuthError::InvalidGcpKey {
                client_email: Some(self.client_email.clone()),
                reason: "private_key: signing the assertion failed".to_owned(),
            })?;
        Ok(format!("{signing_input}.{}", b64.encode(signature)))
    }
}

/// Decodes one PEM block: its label and its bytes.
fn pem_decode(pem: &str) -> Result<(String, Vec<u8>), String> {
    let start = pem
        .find("-----BEGIN ")
        .ok_or("not pem (no \"-----BEGIN\" line)")?;
    let rest = &pem[start + "-----BEGIN ".len()..];
    let label_end = rest.find("-----").ok_or("malformed pem begin line")?;
    let label = rest[..label_end].trim().to_owned();
    let body_and_end = &rest[label_end + "-----".len()..];
    let end_marker = format!("-----END {label}-----");
    let body_end = body_and_end
        .find(&end_marker)
        .ok_or_else(|| format!("pem block {label:?} has no end line"))?;
    // Keys pasted through an environment variable sometimes keep literal "\n" sequences.
    let body: String = body_and_end[..body_end]
        .replace("\\n", "\n")
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .map_err(|_| format!("pem block {label:?} is not valid base64"))?;
    Ok((label, der))
}

/// An OAuth2 access token and how long it is valid. `Debug` never prints the token.
#[derive(Clone)]
pub struct AccessToken {
    token: String,
    expires_in: Duration,
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessToken")
            .field("token", &"<redacted>")
            .field("expires_in", &self.expires_in)
            .finish()
    }
}

impl AccessToken {
    /// The token itself (a secret).
    pub fn secret(&self) -> &str {
        &self.token
    }

    /// How long the token is valid from when it was issued.
    pub fn expires_in(&self) -> Duration {
        self.expires_in
    }

    /// Registry credentials: basic auth as [`USERNAME`] with the token as password.
    pub fn registry_credentials(&self) -> Credentials {
        Credentials::basic(USERNAME, self.token.clone())
    }
}

/// Exchanges service-account keys for access tokens, and caches them. Cheap to clone (the
/// cache is shared).
#[derive(Debug, Clone)]
pub struct GcpTokenProvider {
    http: reqwest::Client,
    config: RegistryConfig,
    retry: RetryPolicy,
    cache: Arc<ExchangeCache>,
}

impl GcpTokenProvider {
    /// A provider sending its requests through `http`; `config` decides which token endpoints
    /// may be reached over plain http (loopback and its insecure hosts only).
    pub fn new(http: reqwest::Client, config: RegistryConfig, retry: RetryPolicy) -> Self {
        GcpTokenProvider {
            http,
            config,
            retry,
            cache: Arc::default(),
        }
    }

    /// Registry credentials (`oauth2accesstoken` / access token) for the key
    /// `service_account_json`, from the cache while the token has more than
    /// [`super::cloud::REFRESH_MARGIN`] to live.
    pub async fn credentials(&self, service_account_json: &str) -> Result<Credentials, Error> {
        let identity = KeyFields::parse(service_account_json)?.identity();
        self.cache
            .get_or_exchange(identity, || async {
                let key = ServiceAccountKey::from_json(service_account_json)?;
                let token = self.exchange(&key).await?;
                Ok::<_, Error>((
                    token.registry_credentials(),
                    cloud::cache_until(token.expires_in),
                ))
            })
            .await
    }

    /// Forgets the cached token of `service_account_json` (after a registry refused it).
    pub fn forget(&self, service_account_json: &str) {
        if let Ok(fields) = KeyFields::parse(service_account_json) {
            self.cache.forget(&fields.identity());
        }
    }

    /// Exchanges a fresh assertion for an access token at the key's `token_uri` (no cache).
    pub async fn exchange(&self, key: &ServiceAccountKey) -> Result<AccessToken, Error> {
        let endpoint = key.token_uri.clone();
        let fail = |reason: String| CloudAuthError::Exchange {
            provider: "gcp",
            subject: key.client_email.clone(),
            endpoint: endpoint.clone(),
            reason,
        };
        let url = Url::parse(&endpoint).map_err(|e| fail(format!("invalid token_uri: {e}")))?;
        check_url(&self.config, &url)?;
        let assertion = key.assertion(SystemTime::now())?;
        // Both values are URL-safe already except for the grant type's colons.
        let body = format!(
            "grant_type={}&assertion={assertion}",
            GRANT_TYPE.replace(':', "%3A")
        );
        let resp = cloud::send_retrying(self.retry, "gcp token", || {
            self.http
                .post(url.clone())
                .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                .header(ACCEPT, "application/json")
                .body(body.clone())
        })
        .await
        .map_err(|e| fail(cloud::transport_reason(e)))?;
        let status = resp.status().as_u16();
        let bytes = crate::http_body::read_limited(
            resp,
            super::token::MAX_TOKEN_RESPONSE_BYTES,
            url.host_str().unwrap_or_default(),
            "GCP token response",
        )
        .await
        .map_err(|e| fail(e.to_string()))?;
        let parsed: Option<Map<String, Value>> = match serde_json::from_slice(&bytes) {
            Ok(Value::Object(m)) => Some(m),
            _ => None,
        };
        let text = |name: &str| {
            parsed
                .as_ref()
                .and_then(|m| m.get(name))
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        if !(200..300).contains(&status) {
            return Err(CloudAuthError::Rejected {
                provider: "gcp",
                subject: key.client_email.clone(),
                endpoint,
                status,
                code: text("error").map(|c| cloud::scrub(&c)),
                message: text("error_description").map(|m| cloud::scrub(&m)),
            }
            .into());
        }
        let Some(obj) = parsed else {
            return Err(fail(match serde_json::from_slice::<Value>(&bytes) {
                Err(e) => format!("invalid response: {}", cloud::json_error(&e)),
                Ok(_) => "invalid response: not a json object".to_owned(),
            })
            .into());
        };
        let token = obj
            .get("access_token")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| fail("invalid response: no access_token".to_owned()))?
            .to_owned();
        let expires_in = obj
            .get("expires_in")
            .and_then(|v| v.as_u64().or_else(|| v.as_str()?.parse().ok()))
            .map_or(DEFAULT_TOKEN_LIFETIME, Duration::from_secs);
        Ok(AccessToken { token, expires_in })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_json(private_key: &str) -> String {
        json!({
            "type": "service_account",
            "client_email": "puller@proj.iam.gserviceaccount.com",
            "private_key_id": "abc123",
            "private_key": private_key,
            "token_uri": "https://oauth2.googleapis.com/token",
        })
        .to_string()
    }

    #[test]
    fn malformed_keys_are_named_and_never_echoed() {
        let secret_pem =
            "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleS1ieXRlcw==\n-----END PRIVATE KEY-----\n";
        let cases: Vec<(String, &str)> = vec![
            ("{not json".into(), "not valid json"),
            ("\"just a string\"".into(), "not a json object"),
            (
                json!({"type": "authorized_user", "client_email": "x@y"}).to_string(),
                "expected \"service_account\"",
            ),
            (
                json!({"type": "service_account", "client_email": "x@y", "private_key_id": "k"})
                    .to_string(),
                "missing field \"private_key\"",
            ),
            (
                json!({"client_email": "x@y", "private_key": 5}).to_string(),
                "\"private_key\" is not a string",
            ),
            (key_json("not a pem"), "not pem"),
            (key_json(secret_pem), "not a usable rsa private key"),
            (
                key_json("-----BEGIN PRIVATE KEY-----\n!!!\n-----END PRIVATE KEY-----"),
                "not valid base64",
            ),
        ];
        for (json, want) in cases {
            let err = ServiceAccountKey::from_json(&json).unwrap_err().to_string();
            assert!(err.starts_with("gcp service account key"), "{err}");
            assert!(err.contains(want), "{err} (wanted {want})");
            assert!(!err.contains("c2VjcmV0"), "{err}");
        }
    }

    #[test]
    fn identity_depends_on_the_private_key() {
        let a = KeyFields::parse(&key_json("A")).unwrap().identity();
        let b = KeyFields::parse(&key_json("B")).unwrap().identity();
        assert_ne!(a, b);
        assert_eq!(a, KeyFields::parse(&key_json("A")).unwrap().identity());
    }

    #[test]
    fn pem_with_escaped_newlines() {
        let (label, der) =
            pem_decode("-----BEGIN PRIVATE KEY-----\\nAAEC\\n-----END PRIVATE KEY-----\\n")
                .unwrap();
        assert_eq!(label, "PRIVATE KEY");
        assert_eq!(der, vec![0, 1, 2]);
    }
}
