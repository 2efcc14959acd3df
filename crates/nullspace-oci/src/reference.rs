//! Image references (`[registry/]repository[:tag][@digest]`) with Docker's normalisation.

use std::fmt;
use std::str::FromStr;

use crate::digest::Digest;

/// The canonical name of Docker Hub.
pub const DOCKER_HUB: &str = "docker.io";
/// The host that actually serves Docker Hub's registry API.
pub const DOCKER_HUB_API: &str = "registry-1.docker.io";

const MAX_NAME_LEN: usize = 255;
const MAX_TAG_LEN: usize = 128;

/// A normalised image reference.
///
/// `ubuntu` parses to `docker.io/library/ubuntu:latest`; a reference with only a digest keeps
/// `tag == None`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    /// Registry host with optional port (`docker.io`, `localhost:5000`, `[::1]:5000`).
    pub registry: String,
    /// Repository path (`library/ubuntu`).
    pub repository: String,
    /// Tag, if any (`latest` is filled in when neither tag nor digest is given).
    pub tag: Option<String>,
    /// Digest, if any.
    pub digest: Option<Digest>,
}

/// Why a string is not a valid image reference.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid image reference {input:?}: {reason}")]
pub struct ReferenceError {
    /// The rejected input.
    pub input: String,
    /// What is wrong with it.
    pub reason: String,
}

impl Reference {
    /// Parses and normalises a reference the way `docker pull` does.
    pub fn parse(s: &str) -> Result<Reference, ReferenceError> {
        let err = |reason: String| ReferenceError {
            input: s.to_owned(),
            reason,
        };
        if s.is_empty() {
            return Err(err("empty reference".into()));
        }
        if s.trim() != s || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(err("must not contain whitespace".into()));
        }
        let (rest, digest) = match s.split_once('@') {
            Some((rest, d)) => {
                let digest = d.parse::<Digest>().map_err(|e| err(e.reason.to_string()))?;
                (rest, Some(digest))
            }
            None => (s, None),
        };
        // A tag is the part after the last ':' that follows the last '/'.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => {
                let i = last_slash + i;
                (&rest[..i], Some(&rest[i + 1..]))
            }
            None => (rest, None),
        };
        if let Some(tag) = tag {
            validate_tag(tag).map_err(err)?;
        }
        let (registry, repository) = split_registry(name);
        validate_registry(&registry).map_err(err)?;
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository.to_owned()
        };
        validate_repository(&repository).map_err(err)?;
        if registry.len() + 1 + repository.len() > MAX_NAME_LEN {
            return Err(err(format!("name longer than {MAX_NAME_LEN} characters")));
        }
        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t.to_owned()),
            (None, None) => Some("latest".to_owned()),
            (None, Some(_)) => None,
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// The manifest reference to request: the digest when known, else the tag.
    pub fn manifest_reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".to_owned(),
        }
    }

    /// The host (with port) serving the registry API: Docker Hub maps to `registry-1.docker.io`.
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            &self.registry
        }
    }

    /// `registry/repository`, without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl FromStr for Reference {
    type Err = ReferenceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Reference::parse(s)
    }
}

/// Normalises a registry host name: Docker Hub aliases become `docker.io`.
pub fn normalize_registry(host: &str) -> String {
    match host {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            DOCKER_HUB.to_owned()
        }
        other => other.to_owned(),
    }
}

fn split_registry(name: &str) -> (String, &str) {
    match name.split_once('/') {
        Some((first, rest))
            if first.contains('.')
                || first.contains(':')
                || first == "localhost"
                || first.chars().any(|c| c.is_ascii_uppercase()) =>
        {
            (normalize_registry(first), rest)
        }
        _ => (DOCKER_HUB.to_owned(), name),
    }
}

fn validate_tag(tag: &str) -> Result<(), String> {
    let mut chars = tag.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
    if !first_ok || tag.len() > MAX_TAG_LEN {
        return Err(format!(
            "tag {tag:?} must start with a letter, digit or '_' and be at most {MAX_TAG_LEN} characters"
        ));
    }
    if !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')) {
        return Err(format!(
            "tag {tag:?} may only contain letters, digits, '_', '.', '-'"
        ));
    }
    Ok(())
}

fn validate_registry(registry: &str) -> Result<(), String> {
    let bad = || format!("registry {registry:?} is not a valid host[:port]");
    let (host, port) = if let Some(rest) = registry.strip_prefix('[') {
        let (v6, after) = rest.split_once(']').ok_or_else(bad)?;
        if v6.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(bad());
        }
        match after {
            "" => (None, None),
            p => (None, Some(p.strip_prefix(':').ok_or_else(bad)?)),
        }
    } else {
        match registry.split_once(':') {
            Some((h, p)) => (Some(h), Some(p)),
            None => (Some(registry), None),
        }
    };
    if let Some(port) = port {
        if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
    }
    if let Some(host) = host {
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if host.is_empty() || !host.split('.').all(label_ok) {
            return Err(bad());
        }
    }
    Ok(())
}

fn validate_repository(repo: &str) -> Result<(), String> {
    if repo.is_empty() {
        return Err("repository is empty".into());
    }
    for component in repo.split('/') {
        if !component_ok(component) {
            return Err(format!(
                "repository component {component:?} must be lower-case letters and digits, separated by '.', '_', '__' or '-'"
            ));
        }
    }
    Ok(())
}

fn component_ok(c: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = c.as_bytes();
    let (Some(&first), Some(&last)) = (bytes.first(), bytes.last()) else {
        return false;
    };
    if !alnum(first) || !alnum(last) {
        return false;
    }
    // Separators: '.', '_', '__', or one or more '-'.
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if alnum(b) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|b| b == b'-');
        if !ok {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(s: &str) -> String {
        Reference::parse(s).unwrap().to_string()
    }

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn docker_hub_normalisation() {
        assert_eq!(canon("ubuntu"), "docker.io/library/ubuntu:latest");
        assert_eq!(canon("ubuntu:22.04"), "docker.io/library/ubuntu:22.04");
        assert_eq!(canon("oven/bun:1.2"), "docker.io/oven/bun:1.2");
        assert_eq!(canon("docker.io/ubuntu"), "docker.io/library/ubuntu:latest");
        assert_eq!(
            canon("index.docker.io/library/ubuntu"),
            "docker.io/library/ubuntu:latest"
        );
        assert_eq!(
            canon("registry-1.docker.io/ubuntu:1"),
            "docker.io/library/ubuntu:1"
        );
        let r = Reference::parse("ubuntu").unwrap();
        assert_eq!(r.api_host(), "registry-1.docker.io");
        assert_eq!(r.repository, "library/ubuntu");
    }

    #[test]
    fn registries_ports_localhost() {
        let r = Reference::parse("localhost:5000/x").unwrap();
        assert_eq!(r.registry, "localhost:5000");
        assert_eq!(r.repository, "x");
        assert_eq!(r.tag.as_deref(), Some("latest"));
        let r = Reference::parse("localhost/x/y:1").unwrap();
        assert_eq!(r.registry, "localhost");
        assert_eq!(r.repository, "x/y");
        assert_eq!(
            canon("127.0.0.1:5000/library/debian:bookworm"),
            "127.0.0.1:5000/library/debian:bookworm"
        );
        assert_eq!(
            canon("registry.example.com/team/app:1.0"),
            "registry.example.com/team/app:1.0"
        );
        assert_eq!(canon("[::1]:5000/a"), "[::1]:5000/a:latest");
        assert_eq!(canon("ghcr.io/a/b/c"), "ghcr.io/a/b/c:latest");
    }

    #[test]
    fn digests_and_tag_plus_digest() {
        let r = Reference::parse(&format!("ubuntu@{D}")).unwrap();
        assert_eq!(r.tag, None);
        assert_eq!(
            r.digest.as_ref().map(ToString::to_string).as_deref(),
            Some(D)
        );
        assert_eq!(r.manifest_reference(), D);
        let r = Reference::parse(&format!("localhost:5000/ubuntu:22.04@{D}")).unwrap();
        assert_eq!(r.tag.as_deref(), Some("22.04"));
        assert_eq!(r.manifest_reference(), D);
        assert_eq!(r.to_string(), format!("localhost:5000/ubuntu:22.04@{D}"));
    }

    #[test]
    fn round_trips_through_display() {
        for s in ["ubuntu", "a/b:c", "localhost:5000/x@".to_owned().as_str()] {
            if let Ok(r) = Reference::parse(s) {
                assert_eq!(Reference::parse(&r.to_string()).unwrap(), r);
            }
        }
    }

    #[test]
    fn rejects_invalid_inputs_naming_them() {
        for bad in [
            "",
            "Ubuntu",
            "ubuntu:",
            "ubuntu:-x",
            "ubuntu@sha256:abc",
            "ubuntu@",
            "a//b",
            "a/b/",
            "/a",
            "has space",
            "UPPER/repo/Name",
            "host:port/x",
            "a..b/c",
            "a/b:c:d",
            "ex ample.com/a",
            "a___b",
            &format!("x:{}", "t".repeat(200)),
        ] {
            let err = Reference::parse(bad).unwrap_err();
            assert!(
                err.to_string().contains(&format!("{bad:?}")),
                "{bad:?} -> {err}"
            );
        }
    }
}
