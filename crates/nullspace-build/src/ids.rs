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
