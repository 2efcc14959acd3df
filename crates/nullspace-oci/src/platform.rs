//! Platforms and the selection of one manifest from an index for the microVM host.
//!
//! Rules (templates spec §4.5): only Linux for the wanted architecture; an exact
//! Firecracker-compatible variant (`amd64/v1`, `arm64/v8` or `arm64/v8.0`) is preferred, a
//! variantless entry is the fallback; entries with `os.version` or non-empty `os.features` are
//! rejected; attestation entries are skipped.

use std::fmt;

use crate::config::ImageConfig;
use crate::manifest::{Descriptor, DescriptorPlatform, ImageIndex, REFERENCE_TYPE_ANNOTATION};
use crate::media_types::{self, ManifestKind};

/// An OS/architecture/variant triple.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Platform {
    /// Operating system (`linux`).
    pub os: String,
    /// CPU architecture in Go's naming (`amd64`, `arm64`).
    pub architecture: String,
    /// CPU variant (`v1`, `v8`).
    pub variant: Option<String>,
}

impl Platform {
    /// The microVM platform for this host: `linux/amd64/v1` or `linux/arm64/v8`.
    pub fn host() -> Platform {
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", Some("v1")),
            "aarch64" => ("arm64", Some("v8")),
            "x86" => ("386", None),
            "arm" => ("arm", Some("v7")),
            "riscv64" => ("riscv64", None),
            "powerpc64" => ("ppc64le", None),
            "s390x" => ("s390x", None),
            other => (other, None),
        };
        Platform {
            os: "linux".to_owned(),
            architecture: architecture.to_owned(),
            variant: variant.map(str::to_owned),
        }
    }

    /// Builds a platform from `os/arch[/variant]`.
    pub fn parse(s: &str) -> Option<Platform> {
        let mut it = s.split('/');
        let os = it.next().filter(|s| !s.is_empty())?;
        let architecture = it.next().filter(|s| !s.is_empty())?;
        let variant = it.next().filter(|s| !s.is_empty()).map(str::to_owned);
        if it.next().is_some() {
            return None;
        }
        Some(Platform {
            os: os.to_owned(),
            architecture: architecture.to_owned(),
            variant,
        })
    }

    /// Variants accepted as an exact match for this platform.
    fn exact_variants(&self) -> Vec<&str> {
        match (self.architecture.as_str(), self.variant.as_deref()) {
            ("arm64", None | Some("v8") | Some("v8.0")) => vec!["v8", "v8.0"],
            ("amd64", None | Some("v1")) => vec!["v1"],
            (_, Some(v)) => vec![v],
            (_, None) => vec![],
        }
    }

    /// How well an entry with (`os`, `architecture`, `variant`) fits: `Some(0)` exact variant,
    /// `Some(1)` variantless fallback, `None` unusable.
    fn rank(&self, os: &str, architecture: &str, variant: Option<&str>) -> Option<u8> {
        if os != self.os || architecture != self.architecture {
            return None;
        }
        match variant.filter(|v| !v.is_empty()) {
            Some(v) if self.exact_variants().contains(&v) => Some(0),
            Some(_) => None,
            None => Some(1),
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

impl From<&DescriptorPlatform> for Platform {
    fn from(p: &DescriptorPlatform) -> Platform {
        Platform {
            os: p.os.clone(),
            architecture: p.architecture.clone(),
            variant: p.variant.clone().filter(|v| !v.is_empty()),
        }
    }
}

/// Why no manifest of an index could be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoMatch {
    /// Every non-attestation entry, described (`linux/arm/v7`, `windows/amd64 (os.version 10.0)`).
    pub offered: Vec<String>,
}

fn describe(p: &DescriptorPlatform) -> String {
    let mut s = Platform::from(p).to_string();
    if let Some(v) = p.os_version.as_deref().filter(|v| !v.is_empty()) {
        s.push_str(&format!(" (os.version {v} rejected)"));
    }
    if !p.os_features.is_empty() {
        s.push_str(&format!(
            " (os.features {} rejected)",
            p.os_features.join(",")
        ));
    }
    s
}

/// Whether an index entry is an attestation or otherwise not an image for any platform.
pub fn is_attestation(d: &Descriptor) -> bool {
    if d.annotations
        .get(REFERENCE_TYPE_ANNOTATION)
        .is_some_and(|t| t == "attestation-manifest")
    {
        return true;
    }
    d.platform
        .as_ref()
        .is_some_and(|p| p.os == "unknown" && p.architecture == "unknown")
}

/// Picks the manifest of `index` for `wanted`, following the module's rules.
pub fn select<'a>(index: &'a ImageIndex, wanted: &Platform) -> Result<&'a Descriptor, NoMatch> {
    let mut best: Option<(u8, &Descriptor)> = None;
    let mut offered = Vec::new();
    for d in &index.manifests {
        if is_attestation(d) {
            continue;
        }
        let Some(p) = &d.platform else {
            offered.push(format!("(no platform) {}", d.digest));
            continue;
        };
        offered.push(describe(p));
        if media_types::classify_manifest(&d.media_type) != ManifestKind::Image {
            continue;
        }
        if p.os_version.as_deref().is_some_and(|v| !v.is_empty()) || !p.os_features.is_empty() {
            continue;
        }
        if let Some(rank) = wanted.rank(&p.os, &p.architecture, p.variant.as_deref()) {
            if best.is_none_or(|(r, _)| rank < r) {
                best = Some((rank, d));
            }
        }
    }
    best.map(|(_, d)| d).ok_or(NoMatch { offered })
}

/// Checks an image config against `wanted`: the platform the image actually is, or why it is
/// rejected.
pub fn check_config(config: &ImageConfig, wanted: &Platform) -> Result<Platform, String> {
    let actual = Platform {
        os: config.os.clone(),
        architecture: config.architecture.clone(),
        variant: config.variant.clone().filter(|v| !v.is_empty()),
    };
    if let Some(v) = config.os_version.as_deref().filter(|v| !v.is_empty()) {
        return Err(format!(
            "image config has os.version {v:?}, which the microVM cannot run"
        ));
    }
    if !config.os_features.is_empty() {
        return Err(format!(
            "image config has os.features [{}], which the microVM cannot run",
            config.os_features.join(",")
        ));
    }
    // Configs without os/architecture are tolerated as "the platform we asked for".
    if actual.os.is_empty() && actual.architecture.is_empty() {
        return Ok(wanted.clone());
    }
    match wanted.rank(&actual.os, &actual.architecture, actual.variant.as_deref()) {
        Some(_) => Ok(actual),
        None => Err(format!("image is {actual}, the microVM needs {wanted}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Digest;
    use std::collections::BTreeMap;

    fn entry(os: &str, arch: &str, variant: Option<&str>, n: u8) -> Descriptor {
        Descriptor {
            media_type: media_types::OCI_MANIFEST.into(),
            digest: Digest::sha256_of(&[n]),
            size: 1,
            urls: vec![],
            annotations: BTreeMap::new(),
            platform: Some(DescriptorPlatform {
                architecture: arch.into(),
                os: os.into(),
                variant: variant.map(Into::into),
                ..Default::default()
            }),
        }
    }

    fn index(m: Vec<Descriptor>) -> ImageIndex {
        ImageIndex {
            schema_version: 2,
            media_type: media_types::OCI_INDEX.into(),
            manifests: m,
            annotations: BTreeMap::new(),
        }
    }

    fn amd64() -> Platform {
        Platform::parse("linux/amd64/v1").unwrap()
    }
    fn arm64() -> Platform {
        Platform::parse("linux/arm64/v8").unwrap()
    }

    #[test]
    fn host_is_linux() {
        let h = Platform::host();
        assert_eq!(h.os, "linux");
        if cfg!(target_arch = "x86_64") {
            assert_eq!(h.to_string(), "linux/amd64/v1");
        }
    }

    #[test]
    fn prefers_exact_variant_then_variantless() {
        let i = index(vec![
            entry("linux", "amd64", None, 1),
            entry("linux", "amd64", Some("v1"), 2),
            entry("linux", "arm64", Some("v8"), 3),
        ]);
        assert_eq!(
            select(&i, &amd64()).unwrap().digest,
            Digest::sha256_of(&[2])
        );
        assert_eq!(
            select(&i, &arm64()).unwrap().digest,
            Digest::sha256_of(&[3])
        );
        let i = index(vec![
            entry("linux", "amd64", None, 1),
            entry("linux", "arm64", Some("v8.0"), 4),
        ]);
        assert_eq!(
            select(&i, &amd64()).unwrap().digest,
            Digest::sha256_of(&[1])
        );
        assert_eq!(
            select(&i, &arm64()).unwrap().digest,
            Digest::sha256_of(&[4])
        );
    }

    #[test]
    fn other_variants_and_oses_do_not_match() {
        let i = index(vec![
            entry("linux", "amd64", Some("v3"), 1),
            entry("windows", "amd64", None, 2),
            entry("linux", "arm", Some("v7"), 3),
        ]);
        let err = select(&i, &amd64()).unwrap_err();
        assert_eq!(
            err.offered,
            vec!["linux/amd64/v3", "windows/amd64", "linux/arm/v7"]
        );
    }

    #[test]
    fn skips_attestations() {
        let mut att = entry("unknown", "unknown", None, 9);
        att.annotations.insert(
            REFERENCE_TYPE_ANNOTATION.into(),
            "attestation-manifest".into(),
        );
        let mut att2 = entry("linux", "amd64", None, 8);
        att2.annotations.insert(
            REFERENCE_TYPE_ANNOTATION.into(),
            "attestation-manifest".into(),
        );
        let i = index(vec![att.clone(), att2, entry("linux", "amd64", None, 1)]);
        assert_eq!(
            select(&i, &amd64()).unwrap().digest,
            Digest::sha256_of(&[1])
        );
        let err = select(&index(vec![att]), &amd64()).unwrap_err();
        assert!(err.offered.is_empty());
    }

    #[test]
    fn rejects_os_version_and_features() {
        let mut a = entry("linux", "amd64", None, 1);
        if let Some(p) = a.platform.as_mut() {
            p.os_features = vec!["gpu".into()];
        }
        let mut b = entry("linux", "amd64", Some("v1"), 2);
        if let Some(p) = b.platform.as_mut() {
            p.os_version = Some("5.15".into());
        }
        let err = select(&index(vec![a, b]), &amd64()).unwrap_err();
        assert!(
            err.offered[0].contains("os.features gpu rejected"),
            "{:?}",
            err.offered
        );
        assert!(
            err.offered[1].contains("os.version 5.15 rejected"),
            "{:?}",
            err.offered
        );
    }

    #[test]
    fn config_checks() {
        let mut c = ImageConfig {
            os: "linux".into(),
            architecture: "amd64".into(),
            ..Default::default()
        };
        assert_eq!(
            check_config(&c, &amd64()).unwrap().to_string(),
            "linux/amd64"
        );
        assert!(check_config(&c, &arm64()).is_err());
        c.os_features = vec!["x".into()];
        assert!(check_config(&c, &amd64())
            .unwrap_err()
            .contains("os.features"));
        c.os_features.clear();
        c.os_version = Some("1".into());
        assert!(check_config(&c, &amd64())
            .unwrap_err()
            .contains("os.version"));
    }
}
