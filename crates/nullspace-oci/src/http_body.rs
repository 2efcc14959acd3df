//! Reading HTTP bodies from registries and token services: bounded, with errors on one line.

use reqwest::Response;

use crate::error::Error;

/// The error chain of `e` on one line, without URLs.
pub(crate) fn describe(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut s = e.to_string();
    let mut src = std::error::Error::source(&e);
    while let Some(cause) = src {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        src = cause.source();
    }
    s
}

/// Reads a whole body, failing once it exceeds `limit` bytes.
pub(crate) async fn read_limited(
    mut resp: Response,
    limit: u64,
    registry: &str,
    what: &str,
) -> Result<Vec<u8>, Error> {
    let mut out = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                if out.len() as u64 + chunk.len() as u64 > limit {
                    return Err(Error::TooLarge {
                        what: what.to_owned(),
                        limit,
                    });
                }
                out.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(out),
            Err(e) => {
                return Err(Error::Transport {
                    registry: registry.to_owned(),
                    what: what.to_owned(),
                    reason: describe(e),
                })
            }
        }
    }
}
