//! What the cloud providers ([`super::gcp`], [`super::ecr`]) share: their error type, a cache
//! of exchanged credentials, bounded retries of the exchange, and the scrubbing of what a
//! token endpoint answers before it reaches a message.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::auth::Credentials;
pub(crate) use crate::retry::send_retrying;

/// Exchanged credentials are dropped this long before they expire.
pub const REFRESH_MARGIN: Duration = Duration::from_secs(60);

/// The longest message taken from a token endpoint's error body.
const MAX_MESSAGE_CHARS: usize = 300;

pub use crate::error::CloudAuthError;

/// Shortens `s` and drops control characters, for text from a remote error body.
pub(crate) fn scrub(s: &str) -> String {
    let cleaned: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let trimmed = cleaned.trim();
    if trimmed.chars().count() > MAX_MESSAGE_CHARS {
        let mut out: String = trimmed.chars().take(MAX_MESSAGE_CHARS).collect();
        out.push('…');
        out
    } else {
        trimmed.to_owned()
    }
}

/// Describes a JSON parse error by its position only (serde messages can quote values).
pub(crate) fn json_error(e: &serde_json::Error) -> String {
    format!("not valid json (line {} column {})", e.line(), e.column())
}

pub(crate) use crate::http_body::describe as transport_reason;

/// One cached exchange: the registry credentials and when to stop using them.
type Slot = Arc<tokio::sync::Mutex<Option<(Credentials, Instant)>>>;

/// Registry credentials obtained by an exchange, keyed by a hash of everything that went into
/// it (so a changed key or secret never reuses another's token). Concurrent callers with the
/// same key wait for one exchange instead of each making their own.
#[derive(Default)]
pub(crate) struct ExchangeCache {
    slots: Mutex<HashMap<[u8; 32], Slot>>,
}

impl std::fmt::Debug for ExchangeCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ExchangeCache(<redacted>)")
    }
}

impl ExchangeCache {
    fn slot(&self, key: [u8; 32]) -> Slot {
        let Ok(mut slots) = self.slots.lock() else {
            return Slot::default();
        };
        // Drop expired entries nobody is using, so the map stays small.
        let now = Instant::now();
        slots.retain(|k, slot| {
            *k == key
                || match slot.try_lock() {
                    Ok(v) => v.as_ref().is_some_and(|(_, until)| *until > now),
                    Err(_) => true,
                }
        });
        slots.entry(key).or_default().clone()
    }

    /// The cached credentials for `key`, or those `exchange` yields (cached until the instant
    /// it returns, when there is one).
    pub(crate) async fn get_or_exchange<F, Fut, E>(
        &self,
        key: [u8; 32],
        exchange: F,
    ) -> Result<Credentials, E>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<(Credentials, Option<Instant>), E>>,
    {
        let slot = self.slot(key);
        let mut guard = slot.lock().await;
        if let Some((creds, until)) = guard.as_ref() {
            if *until > Instant::now() {
                return Ok(creds.clone());
            }
        }
        *guard = None;
        let (creds, until) = exchange().await?;
        if let Some(until) = until.filter(|u| *u > Instant::now()) {
            *guard = Some((creds.clone(), until));
        }
        Ok(creds)
    }

    /// Forgets the credentials for `key` (after a registry refused them).
    pub(crate) fn forget(&self, key: &[u8; 32]) {
        if let Ok(mut slots) = self.slots.lock() {
            slots.remove(key);
        }
    }
}

/// When to stop using a credential valid for `lifetime` from now: [`REFRESH_MARGIN`] before it
/// expires, or never cached (`None`) when it is too short-lived for that.
pub(crate) fn cache_until(lifetime: Duration) -> Option<Instant> {
    lifetime
        .checked_sub(REFRESH_MARGIN)
        .filter(|d| !d.is_zero())
        .map(|d| Instant::now() + d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn caches_until_expiry_and_forgets() {
        let cache = ExchangeCache::default();
        let calls = std::sync::atomic::AtomicUsize::new(0);
        let exchange = |life: Duration| {
            calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move { Ok::<_, ()>((Credentials::basic("u", "p"), cache_until(life))) }
        };
        let k = [1u8; 32];
        for _ in 0..3 {
            let c = cache
                .get_or_exchange(k, || exchange(Duration::from_secs(3600)))
                .await;
            assert_eq!(c, Ok(Credentials::basic("u", "p")));
        }
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
        cache.forget(&k);
        let _ = cache
            .get_or_exchange(k, || exchange(Duration::from_secs(3600)))
            .await;
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 2);
        // Too short-lived to cache: every call exchanges.
        let k2 = [2u8; 32];
        for _ in 0..2 {
            let _ = cache
                .get_or_exchange(k2, || exchange(Duration::from_secs(30)))
                .await;
        }
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 4);
    }

    #[test]
    fn scrubs_remote_text() {
        assert_eq!(scrub(" a\nb\u{7} "), "a b");
        let long = "x".repeat(1000);
        assert_eq!(scrub(&long).chars().count(), MAX_MESSAGE_CHARS + 1);
    }

    #[test]
    fn messages_are_lower_case_and_detailed() {
        let e = CloudAuthError::Rejected {
            provider: "ecr",
            subject: "region us-east-1".into(),
            endpoint: "https://api.ecr.us-east-1.amazonaws.com/".into(),
            status: 403,
            code: Some("UnrecognizedClientException".into()),
            message: Some("The security token included in the request is invalid.".into()),
        };
        assert_eq!(
            e.to_string(),
            "ecr token exchange (region us-east-1) at https://api.ecr.us-east-1.amazonaws.com/ \
             was rejected: http 403: UnrecognizedClientException: The security token included \
             in the request is invalid."
        );
    }
}
