//! Registry configuration: mirrors, plain-http hosts, docker config location.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;

use reqwest::Url;

use crate::address_policy::AddressPolicy;
use crate::error::Error;
use crate::reference::normalize_registry;

/// How the client reaches registries.
#[derive(Debug, Clone, Default)]
pub struct RegistryConfig {
    /// Mirrors per registry, tried in order before the registry itself:
    /// `"docker.io" -> ["http://127.0.0.1:5000"]`.
    pub mirrors: HashMap<String, Vec<String>>,
    /// Hosts (`host` or `host:port`) allowed over plain http. Loopback hosts are too, where
    /// the address policy allows private addresses (a user's own machine, as Docker does).
    pub insecure: Vec<String>,
    /// Which addresses requests may reach (everything, unless a server restricts it).
    pub addresses: AddressPolicy,
    /// Docker `config.json` used for fallback credentials when the caller gives none. A
    /// server shared by tenants leaves it `None`: no tenant may pull with the operator's
    /// credentials.
    pub docker_config: Option<PathBuf>,
}

impl RegistryConfig {
    /// Reads `NULLSPACE_REGISTRY_MIRRORS` (`docker.io=http://127.0.0.1:5000,ghcr.io=https://m`;
    /// repeat a registry for several mirrors), `NULLSPACE_INSECURE_REGISTRIES` (`a:5000,b`) and
    /// `DOCKER_CONFIG` (directory; default `$HOME/.docker`). Malformed entries are skipped with
    /// a warning.
    pub fn from_env() -> RegistryConfig {
        let mut cfg = RegistryConfig::default();
        if let Ok(v) = std::env::var("NULLSPACE_REGISTRY_MIRRORS") {
            for item in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                match item.split_once('=') {
                    Some((reg, url)) if !reg.trim().is_empty() && !url.trim().is_empty() => cfg
                        .mirrors
                        .entry(normalize_registry(reg.trim()))
                        .or_default()
                        .push(url.trim().to_owned()),
                    _ => tracing::warn!(
                        entry = item,
                        "ignoring malformed NULLSPACE_REGISTRY_MIRRORS entry"
                    ),
                }
            }
        }
        if let Ok(v) = std::env::var("NULLSPACE_INSECURE_REGISTRIES") {
            cfg.insecure = v
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect();
        }
        let dir = std::env::var_os("DOCKER_CONFIG")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker")));
        cfg.docker_config = dir.map(|d| d.join("config.json"));
        cfg
    }

    /// Whether plain http is allowed to `host` (`host[:port]`, IPv6 in brackets).
    pub fn allows_http(&self, host_port: &str) -> bool {
        let host = strip_port(host_port);
        (is_loopback(host) && self.addresses.private_allowed)
            || self
                .insecure
                .iter()
                .any(|i| i == host_port || (strip_port(i) == i.as_str() && i == host))
    }
}

/// `host[:port]` → `host` (brackets kept off IPv6).
fn strip_port(host_port: &str) -> &str {
    if let Some(rest) = host_port.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host_port.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) && !h.contains(':') => h,
        _ => host_port,
    }
}

/// Whether `host` is `localhost`, in 127.0.0.0/8 or `::1`.
pub fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// `host[:port]` of a URL, as used in configuration and messages.
pub fn url_host_port(url: &Url) -> String {
    // `host_str` keeps the brackets around IPv6 addresses.
    let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
    match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host,
    }
}

/// Checks that a URL is http(s), uses plain http only where allowed, and names an address the
/// policy lets the client reach. Every request, redirect and token endpoint passes here.
pub fn check_url(config: &RegistryConfig, url: &Url) -> Result<(), Error> {
    config.addresses.check_url(url)?;
    match url.scheme() {
        "https" => Ok(()),
        "http" if config.allows_http(&url_host_port(url)) => Ok(()),
        "http" => Err(Error::InsecureNotAllowed {
            url: url.to_string(),
        }),
        other => Err(Error::Config(format!(
            "{url}: unsupported scheme {other:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_and_insecure_hosts() {
        let cfg = RegistryConfig {
            insecure: vec!["reg.lan:5000".into(), "other.lan".into()],
            ..Default::default()
        };
        for ok in [
            "localhost",
            "localhost:5000",
            "127.0.0.1:5000",
            "127.3.4.5",
            "[::1]:5000",
            "reg.lan:5000",
            "other.lan",
            "other.lan:8080",
        ] {
            assert!(cfg.allows_http(ok), "{ok}");
        }
        for no in [
            "reg.lan",
            "reg.lan:5001",
            "example.com",
            "10.0.0.1:5000",
            "[::2]:5000",
        ] {
            assert!(!cfg.allows_http(no), "{no}");
        }
    }

    #[test]
    fn schemes() {
        let cfg = RegistryConfig::default();
        let u = |s: &str| Url::parse(s).unwrap();
        assert!(check_url(&cfg, &u("https://example.com")).is_ok());
        assert!(check_url(&cfg, &u("http://127.0.0.1:5000")).is_ok());
        let err = check_url(&cfg, &u("http://example.com")).unwrap_err();
        assert!(err.to_string().contains("http://example.com"), "{err}");
        assert!(check_url(&cfg, &u("ftp://example.com")).is_err());
        assert_eq!(url_host_port(&u("http://[::1]:5000/x")), "[::1]:5000");
    }
}
