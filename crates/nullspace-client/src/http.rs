//! The HTTP client: requests with the API key, error envelopes as [`ClientError::Api`],
//! JSON bodies in and out, and retries of idempotent calls while the server is unreachable.

use std::time::Duration;

use backon::{ExponentialBuilder, Retryable as _};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};

use nullspace_api::response::BuildStatusPage;

use crate::error::ClientError;

/// A client of one `nullspace serve`.
#[derive(Clone, Debug)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    key: Option<String>,
    retry_budget: Duration,
}

impl Client {
    /// A client of the server at `base` (`http://host:port`), authenticating with `key`.
    pub fn new(base: &str, key: Option<String>) -> Client {
        Client {
            http: reqwest::Client::new(),
            base: base.trim().trim_end_matches('/').to_string(),
            key,
            retry_budget: Duration::from_secs(30),
        }
    }

    /// How long transient failures (server unreachable, 502/503/504) are retried before an
    /// idempotent call or a log stream gives up (default 30 s).
    pub fn with_retry_budget(mut self, budget: Duration) -> Client {
        self.retry_budget = budget;
        self
    }

    /// The server's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The one backoff of this client: exponential from 250 ms to 4 s, with jitter, for at
    /// most the retry budget in total.
    pub fn backoff(&self) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(250))
            .with_max_delay(Duration::from_secs(4))
            .with_jitter()
            .with_total_delay(Some(self.retry_budget))
            .without_max_times()
    }

    /// A request to `path` (starting with `/`), with the API key.
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let request = self.http.request(method, format!("{}{path}", self.base));
        match &self.key {
            Some(key) => request.bearer_auth(key),
            None => request,
        }
    }

    /// Sends `request`; a non-2xx answer becomes a [`ClientError::Api`] from its envelope.
    pub async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ClientError> {
        let response = request
            .send()
            .await
            .map_err(|source| ClientError::Transport {
                url: self.base.clone(),
                source,
            })?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body = response.text().await.unwrap_or_default();
        let envelope: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        let code = envelope["code"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| {
                match status.as_u16() {
                    401 => "unauthorized",
                    404 => "not_found",
                    409 => "conflict",
                    400 => "invalid_request",
                    _ => "error",
                }
                .to_string()
            });
        let message = envelope["error"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| format!("the server answered {status}: {body}"));
        let envelope = if envelope.is_object() {
            envelope
        } else {
            json!({ "error": message, "code": code })
        };
        Err(ClientError::Api {
            status: status.as_u16(),
            code,
            message,
            envelope,
        })
    }

    /// `method path` with an optional JSON `body`; the answer parsed as `T`.
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&(impl Serialize + ?Sized)>,
    ) -> Result<T, ClientError> {
        let mut request = self.request(method, path);
        if let Some(body) = body {
            request = request.json(body);
        }
        decode(self.send(request).await?, "a JSON answer").await
    }

    /// `GET path`, retried with [`Client::backoff`] while the server is unreachable.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        (|| async {
            decode(
                self.send(self.request(reqwest::Method::GET, path)).await?,
                "a JSON answer",
            )
            .await
        })
        .retry(self.backoff())
        .when(ClientError::is_transient)
        .notify(|error, delay| tracing::warn!("retrying GET {path} in {delay:?}: {error}"))
        .await
    }

    /// `GET /v1/templates/builds/{id}?offset=`: the build and its log entries from `offset`.
    pub async fn status(&self, build_id: &str, offset: u64) -> Result<Value, ClientError> {
        self.get(&format!(
            "/v1/templates/builds/{}?offset={offset}",
            segment(build_id)
        ))
        .await
    }

    /// [`Client::status`], typed.
    pub async fn status_page(
        &self,
        build_id: &str,
        offset: u64,
    ) -> Result<BuildStatusPage, ClientError> {
        self.get(&format!(
            "/v1/templates/builds/{}?offset={offset}",
            segment(build_id)
        ))
        .await
    }
}

/// The JSON body of `response` as `T`.
pub(crate) async fn decode<T: DeserializeOwned>(
    response: reqwest::Response,
    what: &'static str,
) -> Result<T, ClientError> {
    let bytes = response.bytes().await.map_err(|e| ClientError::Decode {
        what,
        message: e.to_string(),
    })?;
    serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode {
        what,
        message: e.to_string(),
    })
}

/// An id or ref as one URL path segment (anything but unreserved characters is escaped).
pub fn segment(id: &str) -> String {
    id.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
