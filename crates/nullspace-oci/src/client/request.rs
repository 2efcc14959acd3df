//! Sending requests: authentication (basic, bearer token flow, docker config fallback) and
//! retries of transient failures.

use reqwest::header::{HeaderValue, ACCEPT, AUTHORIZATION, RANGE, WWW_AUTHENTICATE};
use reqwest::{RequestBuilder, Response, Url};
use sha2::{Digest as _, Sha256};

use super::{Endpoint, RegistryClient};
use crate::auth::challenge::{self, Challenge};
use crate::auth::{basic, docker_config, token, Credentials};
use crate::error::Error;

/// One GET to a registry endpoint.
pub(crate) struct RegistryGet<'a> {
    pub ep: &'a Endpoint,
    pub repo: &'a str,
    /// Path after `/v2/<repo>/` (`manifests/<ref>`, `blobs/<digest>`).
    pub path: String,
    pub accept: Option<&'a str>,
    /// Ask for `bytes=<n>-`.
    pub range_from: Option<u64>,
    /// What is requested, for messages.
    pub what: &'a str,
}

pub(crate) use crate::http_body::describe;

fn fingerprint(c: &Credentials) -> String {
    match c {
        Credentials::Anonymous => "anonymous".to_owned(),
        Credentials::Basic { username, password } => {
            let h = Sha256::digest(format!("{username}\0{password}"));
            hex::encode(h.get(..8).unwrap_or_default())
        }
        Credentials::Bearer(t) => hex::encode(Sha256::digest(t).get(..8).unwrap_or_default()),
        // Exchanged for basic credentials before any request; hashed all the same.
        Credentials::Gcp {
            service_account_json,
        } => hex::encode(
            Sha256::digest(format!("gcp\0{service_account_json}"))
                .get(..8)
                .unwrap_or_default(),
        ),
        Credentials::Ecr {
            access_key_id,
            secret_access_key,
            session_token,
            region,
            endpoint,
        } => hex::encode(
            Sha256::digest(format!(
                "ecr\0{access_key_id}\0{secret_access_key}\0{session_token:?}\0{region}\0{endpoint:?}"
            ))
            .get(..8)
            .unwrap_or_default(),
        ),
    }
}

impl RegistryClient {
    /// Sends `build()` until it yields a response that is not a transient failure, or the
    /// retry policy is exhausted.
    pub(crate) async fn send_retrying(
        &self,
        registry: &str,
        what: &str,
        build: impl Fn() -> RequestBuilder,
    ) -> Result<Response, Error> {
        crate::retry::send_retrying(self.inner.retry, what, build)
            .await
            .map_err(|e| Error::Transport {
                registry: registry.to_owned(),
                what: what.to_owned(),
                reason: describe(e),
            })
    }

    /// A GET without credentials (foreign layer URLs), with retries; returns a 2xx response.
    pub(crate) async fn plain_get(
        &self,
        url: &Url,
        range_from: Option<u64>,
        what: &str,
    ) -> Result<Response, Error> {
        crate::registry_config::check_url(&self.inner.config, url)?;
        let host = crate::registry_config::url_host_port(url);
        let resp = self
            .send_retrying(&host, what, || {
                let mut b = self.inner.http.get(url.clone());
                if let Some(n) = range_from {
                    b = b.header(RANGE, format!("bytes={n}-"));
                }
                b
            })
            .await?;
        check_status(resp, &host, what)
    }

    /// A GET to a registry endpoint with authentication and retries; returns a 2xx response.
    /// Cloud credentials (GCP, ECR) are exchanged first, and forgotten if the registry refuses
    /// what they were exchanged for.
    pub(crate) async fn registry_get(
        &self,
        req: &RegistryGet<'_>,
        credentials: &Credentials,
    ) -> Result<Response, Error> {
        if req.ep.mirror || !credentials.needs_exchange() {
            return self.registry_get_with(req, credentials).await;
        }
        let exchanged = self.exchange_credentials(credentials, &req.ep.host).await?;
        let result = self.registry_get_with(req, &exchanged).await;
        if let Err(Error::AuthRejected { .. }) = &result {
            self.forget_exchanged(credentials, &req.ep.host);
        }
        result
    }

    /// [`RegistryClient::registry_get`] with credentials a registry takes as they are.
    async fn registry_get_with(
        &self,
        req: &RegistryGet<'_>,
        credentials: &Credentials,
    ) -> Result<Response, Error> {
        let ep = req.ep;
        let url = ep
            .base
            .join(&format!("/v2/{}/{}", req.repo, req.path))
            .map_err(|e| Error::Config(format!("registry {}: {e}", ep.host)))?;
        // The caller's credentials belong to the image's registry, never to a mirror.
        let mut creds = if ep.mirror {
            Credentials::Anonymous
        } else {
            credentials.clone()
        };
        let mut looked_up_docker_config = false;
        let scope = format!("repository:{}:pull", req.repo);
        let mut cache_key = format!("{scope}#{}", fingerprint(&creds));
        let mut auth = self.current_auth(ep, &cache_key, &creds);
        let mut fresh = false;
        loop {
            let resp = self
                .send_retrying(&ep.host, req.what, || {
                    let mut b = self.inner.http.get(url.clone());
                    if let Some(a) = req.accept {
                        b = b.header(ACCEPT, a);
                    }
                    if let Some(n) = req.range_from {
                        b = b.header(RANGE, format!("bytes={n}-"));
                    }
                    if let Some(a) = &auth {
                        b = b.header(AUTHORIZATION, a.clone());
                    }
                    b
                })
                .await?;
            let status = resp.status().as_u16();
            if status != 401 {
                return check_status(resp, &ep.host, req.what);
            }
            let rejected = |creds: &Credentials| Error::AuthRejected {
                registry: ep.host.clone(),
                status,
                hint: if creds.is_anonymous() {
                    "; no credentials were given".to_owned()
                } else {
                    String::new()
                },
            };
            if fresh {
                return Err(rejected(&creds));
            }
            fresh = true;
            self.inner.tokens.remove(&ep.host, &cache_key);
            if creds.is_anonymous() && !looked_up_docker_config {
                looked_up_docker_config = true;
                if let Some(path) = &self.inner.config.docker_config {
                    if let Some(c) = docker_config::lookup(path, &ep.auth_name).await? {
                        tracing::debug!(registry = %ep.host, "using credentials from docker config");
                        creds = c;
                        cache_key = format!("{scope}#{}", fingerprint(&creds));
                    }
                }
            }
            let header = resp
                .headers()
                .get(WWW_AUTHENTICATE)
                .and_then(|h| h.to_str().ok())
                .and_then(challenge::parse);
            auth = match (header, &creds) {
                (_, Credentials::Bearer(_)) if auth.is_some() => return Err(rejected(&creds)),
                (_, Credentials::Bearer(t)) => Some(header_value(&format!("Bearer {t}"))?),
                (
                    Some(Challenge::Bearer {
                        realm,
                        service,
                        scope: s,
                    }),
                    _,
                ) => {
                    let token_scope = s.unwrap_or_else(|| scope.clone());
                    let treq = token::TokenRequest {
                        registry: &ep.host,
                        realm: &realm,
                        service: service.as_deref(),
                        scope: &token_scope,
                    };
                    let (tok, lifetime) =
                        token::fetch(&self.inner.http, &self.inner.config, &treq, &creds).await?;
                    let value = header_value(&format!("Bearer {tok}"))?;
                    self.inner.tokens.put(&ep.host, &cache_key, tok, lifetime);
                    Some(value)
                }
                (Some(Challenge::Basic), Credentials::Basic { username, password }) => {
                    if let Ok(mut hosts) = self.inner.basic_hosts.lock() {
                        hosts.insert(ep.host.clone());
                    }
                    Some(header_value(&basic::header_value(username, password))?)
                }
                _ => return Err(rejected(&creds)),
            };
        }
    }

    /// The `Authorization` to send up front, if any is known.
    fn current_auth(
        &self,
        ep: &Endpoint,
        cache_key: &str,
        creds: &Credentials,
    ) -> Option<HeaderValue> {
        if let Credentials::Bearer(t) = creds {
            return header_value(&format!("Bearer {t}")).ok();
        }
        if let Some(t) = self.inner.tokens.get(&ep.host, cache_key) {
            return header_value(&format!("Bearer {t}")).ok();
        }
        if let Credentials::Basic { username, password } = creds {
            let known = self
                .inner
                .basic_hosts
                .lock()
                .is_ok_and(|h| h.contains(&ep.host));
            if known {
                return header_value(&basic::header_value(username, password)).ok();
            }
        }
        None
    }
}

/// A sensitive header value.
fn header_value(s: &str) -> Result<HeaderValue, Error> {
    let mut v = HeaderValue::from_str(s).map_err(|_| {
        Error::Config("credentials contain characters not allowed in an http header".to_owned())
    })?;
    v.set_sensitive(true);
    Ok(v)
}

/// Maps a final response to success (2xx) or an error naming `what`.
fn check_status(resp: Response, registry: &str, what: &str) -> Result<Response, Error> {
    let status = resp.status().as_u16();
    match status {
        200..=299 => Ok(resp),
        401 | 403 => Err(Error::AuthRejected {
            registry: registry.to_owned(),
            status,
            hint: String::new(),
        }),
        404 => Err(Error::NotFound {
            registry: registry.to_owned(),
            what: what.to_owned(),
        }),
        _ => Err(Error::Status {
            registry: registry.to_owned(),
            what: what.to_owned(),
            status,
        }),
    }
}
