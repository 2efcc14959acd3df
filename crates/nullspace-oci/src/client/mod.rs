//! The registry client (OCI distribution spec): manifests, indexes, blobs, auth, mirrors.

mod blobs;
pub mod config;
mod request;
mod resolve;
pub mod retry;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::Url;

use crate::auth::token::TokenCache;
use crate::error::Error;
use crate::reference::Reference;

pub use config::RegistryConfig;
pub use retry::RetryPolicy;

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
                config::check_scheme(&config, &url)?;
            }
        }
        let redirect_config = config.clone();
        let policy = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= 10 {
                return attempt.error("too many redirects");
            }
            // Never downgrade to plain http except to hosts where http is allowed.
            match config::check_scheme(&redirect_config, attempt.url()) {
                Ok(()) => attempt.follow(),
                Err(e) => attempt.error(e.to_string()),
            }
        });
        let http = reqwest::Client::builder()
            .user_agent(concat!("nullspace-oci/", env!("CARGO_PKG_VERSION")))
            .redirect(policy)
            .connect_timeout(Duration::from_secs(30))
            .read_timeout(Duration::from_secs(120))
            .build()
            .map_err(|e| Error::Config(format!("http client: {e}")))?;
        Ok(RegistryClient {
            inner: Arc::new(Inner {
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
            let host = config::url_host_port(&base);
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
        out.push(Endpoint {
            base,
            host,
            mirror: false,
            auth_name: reference.registry.clone(),
        });
        Ok(out)
    }
}
