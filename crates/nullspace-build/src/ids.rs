//! Identifiers and timestamps.

use rand::Rng;

fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut rng = rand::thread_rng();
    (0..20)
        .map(|_| char::from(ALPHABET[rng.gen_range(0..ALPHABET.len())]))
        .collect()
}

/// A new build id, `tb_` + 20 random characters.
pub fn new_build_id() -> String {
    format!("tb_{}", random_suffix())
}

/// A new template id, `tmpl_` + 20 random characters.
pub fn new_template_id() -> String {
    format!("tmpl_{}", random_suffix())
}

/// The current time in RFC 3339 (UTC, microseconds).
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string()
}

/// Whether `id` has the shape of a build id (`tb_` + lower-case letters and digits): safe as a
/// path component.
pub fn is_build_id(id: &str) -> bool {
    id.strip_prefix("tb_").is_some_and(|rest| {
        !rest.is_empty()
            && rest.len() <= 64
            && rest
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    })
}
