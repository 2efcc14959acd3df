//! AWS Elastic Container Registry: an AWS access key is exchanged for a registry password by
//! ECR's `GetAuthorizationToken` (JSON 1.1 protocol, signed with SigV4 for service `ecr`).
//!
//! ```text
//! POST https://api.ecr.<region>.amazonaws.com/   (or the endpoint given)
//!   X-Amz-Target: AmazonEC2ContainerRegistry_V20150921.GetAuthorizationToken
//!   Content-Type: application/x-amz-json-1.1
//!   {}
//! ──► {"authorizationData": [{"authorizationToken": base64("AWS:<password>"),
//!                             "expiresAt": <epoch seconds>, "proxyEndpoint": ...}]}
//! ──► Basic AWS:<password>
//! ```
//!
//! Passwords are cached per (access key, secret, session token, region, endpoint) until
//! [`super::cloud::REFRESH_MARGIN`] before their `expiresAt`.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use base64::Engine as _;
use reqwest::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use reqwest::Url;
use serde_json::{Map, Value};
use sha2::{Digest as _, Sha256};

use super::cloud::{self, CloudAuthError, ExchangeCache};
use crate::auth::Credentials;
use crate::error::Error;
use crate::registry_config::{check_url, url_host_port, RegistryConfig};
use crate::retry::RetryPolicy;

/// The `X-Amz-Target` of the call.
pub const TARGET: &str = "AmazonEC2ContainerRegistry_V20150921.GetAuthorizationToken";
/// The content type of the JSON 1.1 protocol.
pub const CONTENT_TYPE_JSON_1_1: &str = "application/x-amz-json-1.1";
/// The SigV4 service name.
pub const SIGNING_SERVICE: &str = "ecr";

/// What one `GetAuthorizationToken` call needs. `Debug` shows the region and endpoint only.
#[derive(Clone, Copy)]
pub struct EcrAuthRequest<'a> {
    /// AWS access key id (`AKIA...`, or `ASIA...` with a session token).
    pub access_key_id: &'a str,
    /// AWS secret access key.
    pub secret_access_key: &'a str,
    /// Session token of temporary credentials.
    pub session_token: Option<&'a str>,
    /// AWS region (`us-east-1`).
    pub region: &'a str,
    /// The ECR API endpoint, when not `https://api.ecr.<region>.amazonaws.com/` (VPC
    /// endpoints, tests).
    pub endpoint: Option<&'a str>,
}

impl fmt::Debug for EcrAuthRequest<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EcrAuthRequest")
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl<'a> EcrAuthRequest<'a> {
    /// The request held by [`Credentials::Ecr`], if `credentials` are that.
    pub fn from_credentials(credentials: &'a Credentials) -> Option<EcrAuthRequest<'a>> {
        match credentials {
            Credentials::Ecr {
                access_key_id,
                secret_access_key,
                session_token,
                region,
                endpoint,
            } => Some(EcrAuthRequest {
                access_key_id,
                secret_access_key,
                session_token: session_token.as_deref(),
                region,
                endpoint: endpoint.as_deref(),
            }),
            _ => None,
        }
    }

    /// Checks the region, the access key id and the endpoint, returning the endpoint URL.
    pub fn validate(&self) -> Result<Url, CloudAuthError> {
        validate_region(self.region)?;
        let invalid = |field, reason: &str| CloudAuthError::InvalidEcrCredentials {
            field,
            reason: reason.to_owned(),
        };
        if self.access_key_id.is_empty() {
            return Err(invalid("access_key_id", "it is empty"));
        }
        if !self
            .access_key_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric())
        {
            return Err(invalid(
                "access_key_id",
                "it may hold only letters and digits (like \"AKIAIOSFODNN7EXAMPLE\")",
            ));
        }
        if self.secret_access_key.is_empty() {
            return Err(invalid("secret_access_key", "it is empty"));
        }
        if self.secret_access_key.chars().any(char::is_whitespace) {
            return Err(invalid("secret_access_key", "it contains white space"));
        }
        if self.session_token.is_some_and(str::is_empty) {
            return Err(invalid(
                "session_token",
                "it is empty (leave it out instead)",
            ));
        }
        let endpoint = self
            .endpoint
            .map_or_else(|| api_endpoint(self.region), str::to_owned);
        let url = Url::parse(&endpoint).map_err(|e| CloudAuthError::InvalidEcrCredentials {
            field: "endpoint",
            reason: format!("{endpoint:?}: {e}"),
        })?;
        if url.host_str().is_none_or(str::is_empty) {
            return Err(CloudAuthError::InvalidEcrCredentials {
                field: "endpoint",
                reason: format!("{endpoint:?} has no host"),
            });
        }
        Ok(url)
    }

    /// The cache key: everything that decides which password the exchange yields.
    fn identity(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        for part in [
            "ecr",
            self.access_key_id,
            self.secret_access_key,
            self.session_token.unwrap_or("\u{1}none"),
            self.region,
            self.endpoint.unwrap_or(""),
        ] {
            h.update(part.as_bytes());
            h.update([0]);
        }
        h.finalize().into()
    }

    fn subject(&self) -> String {
        format!("region {}, access key {}", self.region, self.access_key_id)
    }
}

/// Checks that `region` looks like an AWS region: lower-case letters in dash-separated parts
/// ending with a number, like `us-east-1`, `us-gov-west-1` or `cn-north-1`.
pub fn validate_region(region: &str) -> Result<(), CloudAuthError> {
    let parts: Vec<&str> = region.split('-').collect();
    let letters = |s: &&str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase());
    let ok = region.len() <= 32
        && parts.len() >= 3
        && parts.first().is_some_and(|p| p.len() == 2 && letters(p))
        && parts
            .get(1..parts.len() - 1)
            .is_some_and(|mid| mid.iter().all(letters))
        && parts
            .last()
            .is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    if ok {
        Ok(())
    } else {
        Err(CloudAuthError::InvalidEcrCredentials {
            field: "region",
            reason: format!("{region:?} is not an aws region (expected one like \"us-east-1\")"),
        })
    }
}

/// The public ECR API endpoint of `region`.
pub fn api_endpoint(region: &str) -> String {
    let suffix = if region.starts_with("cn-") {
        "amazonaws.com.cn"
    } else {
        "amazonaws.com"
    };
    format!("https://api.ecr.{region}.{suffix}/")
}

/// The region of an ECR registry host (`<account>.dkr.ecr.<region>.amazonaws.com`, also
/// `ecr-fips` and `.amazonaws.com.cn`), or `None` for any other host.
pub fn registry_region(host: &str) -> Option<&str> {
    let host = host.split(':').next()?;
    let labels: Vec<&str> = host.split('.').collect();
    let i = labels.iter().position(|l| l.eq_ignore_ascii_case("dkr"))?;
    let service = labels.get(i + 1)?;
    if !service.eq_ignore_ascii_case("ecr") && !service.eq_ignore_ascii_case("ecr-fips") {
        return None;
    }
    let region = labels.get(i + 2)?;
    let rest = labels.get(i + 3..)?.join(".").to_ascii_lowercase();
    (rest == "amazonaws.com" || rest == "amazonaws.com.cn").then_some(*region)
}

/// What `GetAuthorizationToken` returned. `Debug` never prints the password.
#[derive(Clone)]
pub struct EcrAuthorization {
    username: String,
    password: String,
    expires_at: Option<SystemTime>,
    proxy_endpoint: Option<String>,
}

impl fmt::Debug for EcrAuthorization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EcrAuthorization")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("expires_at", &self.expires_at)
            .field("proxy_endpoint", &self.proxy_endpoint)
            .finish()
    }
}

impl EcrAuthorization {
    /// The registry user name (`AWS`).
    pub fn username(&self) -> &str {
        &self.username
    }

    /// The registry password (a secret).
    pub fn password(&self) -> &str {
        &self.password
    }

    /// When the password expires (`expiresAt`), if the response said.
    pub fn expires_at(&self) -> Option<SystemTime> {
        self.expires_at
    }

    /// The registry URL the password is for (`proxyEndpoint`), if the response said.
    pub fn proxy_endpoint(&self) -> Option<&str> {
        self.proxy_endpoint.as_deref()
    }

    /// Registry credentials: basic auth with the user name and password.
    pub fn registry_credentials(&self) -> Credentials {
        Credentials::basic(self.username.clone(), self.password.clone())
    }
}

/// Calls `GetAuthorizationToken` and caches the passwords. Cheap to clone (the cache is
/// shared).
#[derive(Debug, Clone)]
pub struct EcrTokenProvider {
    http: reqwest::Client,
    config: RegistryConfig,
    retry: RetryPolicy,
    cache: Arc<ExchangeCache>,
}

impl EcrTokenProvider {
    /// A provider sending its requests through `http`; `config` decides which endpoints may be
    /// reached over plain http (loopback and its insecure hosts only).
    pub fn new(http: reqwest::Client, config: RegistryConfig, retry: RetryPolicy) -> Self {
        EcrTokenProvider {
            http,
            config,
            retry,
            cache: Arc::default(),
        }
    }

    /// Registry credentials (`AWS` / password) for `request`, from the cache while the
    /// password has more than [`super::cloud::REFRESH_MARGIN`] to live.
    pub async fn credentials(&self, request: &EcrAuthRequest<'_>) -> Result<Credentials, Error> {
        request.validate()?;
        self.cache
            .get_or_exchange(request.identity(), || async {
                let auth = self.authorization_token(request).await?;
                let until = auth.expires_at.and_then(|at| {
                    let left = at.duration_since(SystemTime::now()).unwrap_or_default();
                    if left.is_zero() {
                        tracing::warn!(
                            region = request.region,
                            "ecr authorization token is already expired by the local clock; using it once, uncached"
                        );
                    }
                    cloud::cache_until(left)
                });
                Ok::<_, Error>((auth.registry_credentials(), until))
            })
            .await
    }

    /// Forgets the cached password of `request` (after a registry refused it).
    pub fn forget(&self, request: &EcrAuthRequest<'_>) {
        self.cache.forget(&request.identity());
    }

    /// Calls `GetAuthorizationToken` (no cache).
    pub async fn authorization_token(
        &self,
        request: &EcrAuthRequest<'_>,
    ) -> Result<EcrAuthorization, Error> {
        let url = request.validate()?;
        check_url(&self.config, &url)?;
        let endpoint = url.to_string();
        let fail = |reason: String| CloudAuthError::Exchange {
            provider: "ecr",
            subject: request.subject(),
            endpoint: endpoint.clone(),
            reason,
        };
        let body = b"{}";
        // Signing fails only on malformed input; find out before sending anything.
        sign_headers(request, &url, body).map_err(|r| fail(format!("signing the request: {r}")))?;
        let resp = cloud::send_retrying(self.retry, "ecr GetAuthorizationToken", || {
            // Signed again per attempt: the signature covers the time.
            let mut b = self
                .http
                .post(url.clone())
                .header(CONTENT_TYPE, CONTENT_TYPE_JSON_1_1)
                .header("x-amz-target", TARGET)
                .body(body.as_slice());
            for (name, value) in sign_headers(request, &url, body).unwrap_or_default() {
                b = b.header(name, value);
            }
            b
        })
        .await
        .map_err(|e| fail(cloud::transport_reason(e)))?;
        let status = resp.status().as_u16();
        let error_type = resp
            .headers()
            .get("x-amzn-errortype")
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(':').next().unwrap_or(v).to_owned());
        let bytes = crate::http_body::read_limited(
            resp,
            super::token::MAX_TOKEN_RESPONSE_BYTES,
            url.host_str().unwrap_or_default(),
            "ECR token response",
        )
        .await
        .map_err(|e| fail(e.to_string()))?;
        let parsed: Result<Value, _> = serde_json::from_slice(&bytes);
        let obj: Option<&Map<String, Value>> = parsed.as_ref().ok().and_then(Value::as_object);
        if !(200..300).contains(&status) {
            let text = |name: &str| obj.and_then(|m| m.get(name)).and_then(Value::as_str);
            let code = error_type
                .or_else(|| text("__type").map(|t| t.rsplit('#').next().unwrap_or(t).to_owned()))
                .filter(|c| !c.is_empty())
                .map(|c| cloud::scrub(&c));
            // Some endpoints (and emulators) answer errors in the query protocol's xml.
            let xml = std::str::from_utf8(&bytes).ok();
            let code = code.or_else(|| xml.and_then(|x| xml_text(x, "Code")).map(cloud::scrub));
            let message = text("message")
                .or_else(|| text("Message"))
                .or_else(|| xml.and_then(|x| xml_text(x, "Message")))
                .map(cloud::scrub);
            return Err(CloudAuthError::Rejected {
                provider: "ecr",
                subject: request.subject(),
                endpoint,
                status,
                code,
                message,
            }
            .into());
        }
        let obj = match &parsed {
            Ok(Value::Object(m)) => m,
            Ok(_) => return Err(fail("invalid response: not a json object".to_owned()).into()),
            Err(e) => {
                return Err(fail(format!("invalid response: {}", cloud::json_error(e))).into())
            }
        };
        let data = obj
            .get("authorizationData")
            .and_then(Value::as_array)
            .and_then(|a| a.first())
            .and_then(Value::as_object)
            .ok_or_else(|| fail("invalid response: no authorizationData".to_owned()))?;
        let token = data
            .get("authorizationToken")
            .and_then(Value::as_str)
            .ok_or_else(|| fail("invalid response: no authorizationToken".to_owned()))?;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(token.trim())
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| fail("invalid response: authorizationToken is not base64".to_owned()))?;
        let (username, password) = decoded
            .split_once(':')
            .filter(|(u, p)| !u.is_empty() && !p.is_empty())
            .ok_or_else(|| {
                fail("invalid response: authorizationToken is not \"user:password\"".to_owned())
            })?;
        let expires_at = data
            .get("expiresAt")
            .and_then(Value::as_f64)
            .filter(|s| s.is_finite() && *s >= 0.0)
            .and_then(|s| UNIX_EPOCH.checked_add(Duration::from_secs_f64(s)));
        Ok(EcrAuthorization {
            username: username.to_owned(),
            password: password.to_owned(),
            expires_at,
            proxy_endpoint: data
                .get("proxyEndpoint")
                .and_then(Value::as_str)
                .map(str::to_owned),
        })
    }
}

/// The text of the first `<tag>...</tag>` in `xml`, if any.
fn xml_text<'a>(xml: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let start = xml.find(&open)? + open.len();
    let len = xml.get(start..)?.find(&format!("</{tag}>"))?;
    xml.get(start..start + len).filter(|t| !t.trim().is_empty())
}

/// The SigV4 headers (`authorization`, `x-amz-date`, `x-amz-security-token`) for a
/// `GetAuthorizationToken` POST of `body` to `url`. Errors never hold the secret.
fn sign_headers(
    request: &EcrAuthRequest<'_>,
    url: &Url,
    body: &[u8],
) -> Result<Vec<(HeaderName, HeaderValue)>, String> {
    let identity = aws_credential_types::Credentials::new(
        request.access_key_id,
        request.secret_access_key,
        request.session_token.map(str::to_owned),
        None,
        "nullspace",
    )
    .into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(request.region)
        .name(SIGNING_SERVICE)
        .time(SystemTime::now())
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| format!("signing parameters: {e}"))?
        .into();
    // The Host header reqwest sends: the port only when it is not the scheme's default.
    let host = url_host_port(url);
    let headers = [
        ("content-type", CONTENT_TYPE_JSON_1_1),
        ("host", host.as_str()),
        ("x-amz-target", TARGET),
    ];
    let signable = SignableRequest::new(
        "POST",
        url.as_str(),
        headers.into_iter(),
        SignableBody::Bytes(body),
    )
    .map_err(|e| format!("request: {e}"))?;
    let (instructions, _signature) = sign(signable, &params)
        .map_err(|e| format!("sigv4: {e}"))?
        .into_parts();
    let mut out = Vec::new();
    for (name, value) in instructions.headers() {
        let name =
            HeaderName::from_bytes(name.as_bytes()).map_err(|_| format!("header name {name:?}"))?;
        let mut value = HeaderValue::from_str(value)
            .map_err(|_| format!("header {name} holds characters not allowed in http"))?;
        value.set_sensitive(true);
        out.push((name, value));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req<'a>(region: &'a str) -> EcrAuthRequest<'a> {
        EcrAuthRequest {
            access_key_id: "AKIAIOSFODNN7EXAMPLE",
            secret_access_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            session_token: Some("session-token-secret"),
            region,
            endpoint: None,
        }
    }

    #[test]
    fn regions() {
        for ok in [
            "us-east-1",
            "us-gov-west-1",
            "cn-northwest-1",
            "ap-southeast-2",
            "us-isob-east-1",
        ] {
            assert!(validate_region(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "us-east",
            "US-EAST-1",
            "useast1",
            "us-east-1a",
            "us-east-1/",
            "u-east-1",
            "us--1",
            "us-east-1.evil.com",
        ] {
            let e = validate_region(bad).unwrap_err().to_string();
            assert!(e.starts_with("ecr credentials: invalid region"), "{e}");
        }
    }

    #[test]
    fn endpoints_and_registry_hosts() {
        assert_eq!(
            api_endpoint("eu-west-1"),
            "https://api.ecr.eu-west-1.amazonaws.com/"
        );
        assert_eq!(
            api_endpoint("cn-north-1"),
            "https://api.ecr.cn-north-1.amazonaws.com.cn/"
        );
        assert_eq!(
            registry_region("123456789012.dkr.ecr.us-west-2.amazonaws.com"),
            Some("us-west-2")
        );
        assert_eq!(
            registry_region("123456789012.dkr.ecr-fips.us-east-1.amazonaws.com:443"),
            Some("us-east-1")
        );
        assert_eq!(
            registry_region("1.dkr.ecr.cn-north-1.amazonaws.com.cn"),
            Some("cn-north-1")
        );
        assert_eq!(registry_region("1.dkr.ecr.us-east-1.example.com"), None);
        assert_eq!(registry_region("us-docker.pkg.dev"), None);
    }

    #[test]
    fn signs_with_session_token_and_redacts() {
        let r = req("us-east-1");
        let url = r.validate().unwrap();
        let headers = sign_headers(&r, &url, b"{}").unwrap();
        let names: Vec<&str> = headers.iter().map(|(n, _)| n.as_str()).collect();
        assert!(names.contains(&"authorization"), "{names:?}");
        assert!(names.contains(&"x-amz-date"), "{names:?}");
        assert!(names.contains(&"x-amz-security-token"), "{names:?}");
        let auth = headers
            .iter()
            .find(|(n, _)| n == "authorization")
            .map(|(_, v)| v.to_str().unwrap().to_owned())
            .unwrap();
        assert!(auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/"));
        assert!(auth.contains("/us-east-1/ecr/aws4_request"), "{auth}");
        assert!(auth.contains("SignedHeaders=content-type;host;"), "{auth}");
        assert!(!auth.contains(r.secret_access_key));
        let dbg = format!("{r:?}");
        assert!(
            !dbg.contains("wJalr")
                && !dbg.contains("session-token-secret")
                && dbg.contains("us-east-1"),
            "{dbg}"
        );
    }

    #[test]
    fn invalid_fields_are_named() {
        let mut r = req("us-east-1");
        r.endpoint = Some("not a url");
        let e = r.validate().unwrap_err().to_string();
        assert!(e.contains("invalid endpoint"), "{e}");
        r.endpoint = None;
        r.access_key_id = "AKIA EXAMPLE";
        assert!(r
            .validate()
            .unwrap_err()
            .to_string()
            .contains("invalid access_key_id"));
        r.access_key_id = "AKIA";
        r.secret_access_key = "";
        assert!(r
            .validate()
            .unwrap_err()
            .to_string()
            .contains("invalid secret_access_key"));
    }
}
