//! HTTP basic authentication.

use base64::Engine as _;

/// The `Authorization` header value for basic auth.
pub fn header_value(username: &str, password: &str) -> String {
    let raw = format!("{username}:{password}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

/// Decodes a Docker config `auth` field (`base64(user:password)`).
pub fn decode_auth_field(auth: &str) -> Option<(String, String)> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(auth.trim())
        .ok()?;
    let s = String::from_utf8(bytes).ok()?;
    let (u, p) = s.split_once(':')?;
    Some((u.to_owned(), p.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let h = header_value("nullspace", "pw:with:colons");
        let enc = h.strip_prefix("Basic ").unwrap();
        assert_eq!(
            decode_auth_field(enc),
            Some(("nullspace".into(), "pw:with:colons".into()))
        );
        assert_eq!(decode_auth_field("!!"), None);
    }
}
