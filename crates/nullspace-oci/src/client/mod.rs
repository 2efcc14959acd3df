//! The registry client (OCI distribution spec): manifests, indexes, blobs, auth, mirrors.

mod blobs;
mod request;
mod resolve;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::Url;

use crate::auth::ecr::{self, EcrAuthRequest, EcrTokenProvider};
use crate::auth::gcp::GcpTokenProvider;
use crate::auth::token::TokenCache;
use crate::auth::{CloudAuthError, Credentials};
use crate::error::Error;
use crate::reference::Reference;

pub use crate::registry_config::RegistryConfig;
pub use crate::retry::RetryPolicy;

/// A registry client. Cheap to clone (shared state behind an `Arc`), so several
/// [`RegistryClient::fetch_blob`] futures can run at once.
#[derive(Debug, Clone)]
pub struct RegistryClient {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    http: reqwest::Client,
    config: RegistryConfig,
    retry: RetryPolicy,
    tokens: TokenCache,
    /// Hosts that asked for basic auth; credentials are then sent up front.
    basic_hosts: Mutex<HashSet<String>>,
    /// Exchanges GCP service-account keys for access tokens.
    gcp: GcpTokenProvider,
    /// Exchanges AWS access keys for ECR passwords.
    ecr: EcrTokenProvider,
}

/// One place a repository can be pulled from: a mirror or the registry itself.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    /// `scheme://host[:port]`.
    pub base: Url,
    /// `host[:port]`, for auth keys and messages.
    pub host: String,
    /// Whether this is a mirror (the caller's credentials are not sent to mirrors).
    pub mirror: bool,
    /// Registry name for docker config lookups (`docker.io` for Docker Hub itself).
    pub auth_name: String,
}

impl RegistryClient {
    /// A client with the default [`RetryPolicy`].
    pub fn new(config: RegistryConfig) -> Result<RegistryClient, Error> {
        RegistryClient::with_retry(config, RetryPolicy::default())
    }

    /// A client with a custom retry policy.
    pub fn with_retry(config: RegistryConfig, retry: RetryPolicy) -> Result<RegistryClient, Error> {
        for (registry, mirrors) in &config.mirrors {
            for m in mirrors {
                let url = Url::parse(m)
                    .map_err(|e| Error::Config(format!("mirror {m:?} for {registry}: {e}")))?;
                crate::registry_config::check_url(&config, &url)?;
            }
        }
        let redirect_config = config.clone();
        let policy = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= 10 {
                return attempt.error("too many redirects");
            }
            // Never downgrade to plain http except to hosts where http is allowed.
            match crate::registry_config::check_url(&redirect_config, attempt.url()) {
                Ok(()) => attempt.follow(),
                Err(e) => attempt.error(e.to_string()),
            }
        });
        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("nullspace-oci/", env!("CARGO_PKG_VERSION")))
            .redirect(policy)
            .connect_timeout(Duration::from_secs(30))
            .read_timeout(Duration::from_secs(120));
        if !config.addresses.private_allowed {
            // Names are judged after resolution, at every connection.
            builder = builder.no_proxy().dns_resolver(Arc::new(
                crate::address_policy::PolicyResolver::new(config.addresses.clone()),
            ));
        }
        let http = builder
            .build()
            .map_err(|e| Error::Config(format!("http client: {e}")))?;
        Ok(RegistryClient {
            inner: Arc::new(Inner {
                gcp: GcpTokenProvider::new(http.clone(), config.clone(), retry),
                ecr: EcrTokenProvider::new(http.clone(), config.clone(), retry),
                http,
                config,
                retry,
                tokens: TokenCache::default(),
                basic_hosts: Mutex::new(HashSet::new()),
            }),
        })
    }

    /// The configuration in use.
    pub fn config(&self) -> &RegistryConfig {
        &self.inner.config
    }

    /// The credentials to present to `registry` (`host[:port]`): [`Credentials::Gcp`] and
    /// [`Credentials::Ecr`] are exchanged for basic credentials (cached until shortly before
    /// they expire); the others are returned as they are. [`RegistryClient::resolve`] and
    /// [`RegistryClient::fetch_blob`] call this themselves; it is public for callers that hand
    /// credentials to another tool (e.g. a Docker config for BuildKit).
    ///
    /// For ECR, an empty region is read from an ECR registry host, and a region that differs
    /// from the registry host's is refused before anything is sent.
    pub async fn exchange_credentials(
        &self,
        credentials: &Credentials,
        registry: &str,
    ) -> Result<Credentials, Error> {
        match credentials {
            Credentials::Gcp {
                service_account_json,
            } => self.inner.gcp.credentials(service_account_json).await,
            Credentials::Ecr { .. } => {
                let Some(mut request) = EcrAuthRequest::from_credentials(credentials) else {
                    return Ok(credentials.clone());
                };
                let host_region = ecr::registry_region(registry);
                match host_region {
                    Some(r) if request.region.is_empty() => request.region = r,
                    Some(r) if r != request.region => {
                        return Err(CloudAuthError::EcrRegionMismatch {
                            region: request.region.to_owned(),
                            registry: registry.to_owned(),
                            registry_region: r.to_owned(),
                        }
                        .into())
                    }
                    _ => {}
                }
                self.inner.ecr.credentials(&request).await
            }
            other => Ok(other.clone()),
        }
    }

    /// Forgets what `credentials` were exchanged for (after `registry` refused it), so the
    /// next pull exchanges them again.
    pub(crate) fn forget_exchanged(&self, credentials: &Credentials, registry: &str) {
        match credentials {
            Credentials::Gcp {
                service_account_json,
            } => self.inner.gcp.forget(service_account_json),
            Credentials::Ecr { .. } => {
                if let Some(mut request) = EcrAuthRequest::from_credentials(credentials) {
                    if let Some(r) =
                        ecr::registry_region(registry).filter(|_| request.region.is_empty())
                    {
                        request.region = r;
                    }
                    self.inner.ecr.forget(&request);
                }
            }
            _ => {}
        }
    }

    /// The endpoints for `reference`, in the order they are tried: mirrors, then upstream.
    pub(crate) fn endpoints(&self, reference: &Reference) -> Result<Vec<Endpoint>, Error> {
        let mut out = Vec::new();
        for m in self
            .inner
            .config
            .mirrors
            .get(&reference.registry)
            .into_iter()
            .flatten()
        {
            let base = Url::parse(m).map_err(|e| Error::Config(format!("mirror {m:?}: {e}")))?;
            let host = crate::registry_config::url_host_port(&base);
            out.push(Endpoint {
                base,
                auth_name: host.clone(),
                host,
                mirror: true,
            });
        }
        let host = reference.api_host().to_owned();
        let scheme = if self.inner.config.allows_http(&host) {
            "http"
        } else {
            "https"
        };
        let base = Url::parse(&format!("{scheme}://{host}"))
            .map_err(|e| Error::Config(format!("registry {host}: {e}")))?;
        // The registry host comes from whoever wrote the reference (mirrors from the operator).
        crate::registry_config::check_url(&self.inner.config, &base)?;
        out.push(Endpoint {
            base,
            host,
            mirror: false,
            auth_name: reference.registry.clone(),
        });
        Ok(out)
    }
}
