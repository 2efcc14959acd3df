//! Bounded retries with exponential, jittered backoff (`backon`).

use std::time::Duration;

use backon::{BackoffBuilder as _, ExponentialBuilder, Retryable as _};
use reqwest::{RequestBuilder, Response};

/// How often and how patiently transient failures (connection errors, 5xx, 429, broken
/// transfers) are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Total attempts, including the first (at least 1).
    pub max_attempts: u32,
    /// Delay before the second attempt; doubled for each further one.
    pub base_delay: Duration,
    /// Upper bound of one delay.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            base_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(8),
        }
    }
}

impl RetryPolicy {
    /// The delays between attempts: exponential from `base_delay` to `max_delay`, each
    /// jittered (so that clients failing together do not retry together), at most
    /// `max_attempts - 1` of them. Every retry loop of the registry client, the token
    /// exchanges and the blob downloads waits with this one backoff.
    pub fn backoff(&self) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(self.base_delay)
            .with_max_delay(self.max_delay)
            .with_jitter()
            .with_max_times(usize::try_from(self.max_attempts.saturating_sub(1)).unwrap_or(0))
    }

    /// [`RetryPolicy::backoff`] as an iterator of delays (for loops that resume rather than
    /// repeat, like blob downloads).
    pub fn delays(&self) -> impl Iterator<Item = Duration> {
        self.backoff().build()
    }
}

/// Sends `build()` until the answer is not a transient failure (connection error, 429, 5xx)
/// or `policy` is exhausted; the last answer (or transport error) is returned. The one retry
/// loop of registry requests and token exchanges.
pub(crate) async fn send_retrying(
    policy: RetryPolicy,
    what: &str,
    build: impl Fn() -> RequestBuilder,
) -> Result<Response, reqwest::Error> {
    /// A response worth another try, or a transport failure.
    enum Failure {
        Status(Response),
        Transport(reqwest::Error),
    }
    let attempt = || async {
        match build().send().await {
            Ok(resp) if retryable_status(resp.status().as_u16()) => Err(Failure::Status(resp)),
            Ok(resp) => Ok(resp),
            Err(e) => Err(Failure::Transport(e)),
        }
    };
    let outcome = attempt
        .retry(policy.backoff())
        .when(|f| match f {
            Failure::Status(_) => true,
            Failure::Transport(e) => !e.is_builder() && !e.is_redirect(),
        })
        .notify(|f, _| match f {
            Failure::Status(resp) => tracing::warn!(
                what,
                status = resp.status().as_u16(),
                "retrying after a server error"
            ),
            Failure::Transport(e) => tracing::warn!(
                what,
                error = failure_kind(e),
                "retrying after a transport error"
            ),
        })
        .await;
    match outcome {
        Ok(resp) | Err(Failure::Status(resp)) => Ok(resp),
        Err(Failure::Transport(e)) => Err(e),
    }
}

/// What kind of transport failure `e` is, for logs (never the URL, which may carry a query).
fn failure_kind(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else if e.is_body() || e.is_decode() {
        "the transfer broke"
    } else {
        "the request failed"
    }
}

/// Whether an HTTP status is worth retrying.
pub fn retryable_status(status: u16) -> bool {
    status == 429 || (500..600).contains(&status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_jittered() {
        let p = RetryPolicy::default();
        let delays: Vec<Duration> = p.delays().collect();
        assert_eq!(delays.len(), 4, "{delays:?}");
        for (i, d) in delays.iter().enumerate() {
            // Jitter adds up to one more delay on top of the exponential step, and never
            // more than twice the cap.
            let step = p.base_delay.saturating_mul(1 << i).min(p.max_delay);
            assert!(*d >= step && *d <= step.saturating_mul(2), "{i}: {d:?}");
        }
        let none = RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        };
        assert_eq!(none.delays().count(), 0);
        assert!(retryable_status(503) && retryable_status(429) && !retryable_status(404));
    }
}
