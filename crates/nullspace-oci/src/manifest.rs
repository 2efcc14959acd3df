//! Descriptors, image manifests and image indexes (OCI and Docker schema 2).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::Error;
use crate::media_types::{self, ManifestKind};

/// Largest manifest or index body accepted (the distribution spec suggests 4 MiB).
pub const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;

/// The annotation marking BuildKit attestation entries in an index.
pub const REFERENCE_TYPE_ANNOTATION: &str = "vnd.docker.reference.type";
/// The OCI annotation naming a manifest in an OCI layout's `index.json`.
pub const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";

/// The platform stanza of an index entry, as written in the JSON.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DescriptorPlatform {
    /// CPU architecture (`amd64`, `arm64`).
    pub architecture: String,
    /// Operating system (`linux`).
    pub os: String,
    /// `os.version` (Windows images).
    #[serde(
        rename = "os.version",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub os_version: Option<String>,
    /// `os.features` (Windows images).
    #[serde(rename = "os.features", default, skip_serializing_if = "Vec::is_empty")]
    pub os_features: Vec<String>,
    /// CPU variant (`v8`, `v1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// CPU features (reserved by the spec).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<String>,
}

/// A content descriptor: what a manifest says about a blob or a child manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type of the referenced content.
    pub media_type: String,
    /// Digest of the referenced content.
    pub digest: Digest,
    /// Size in bytes of the referenced content.
    pub size: u64,
    /// Alternative download locations (non-distributable layers).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Platform (index entries only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<DescriptorPlatform>,
}

/// An image manifest (OCI or Docker schema 2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageManifest {
    /// Always 2.
    pub schema_version: u32,
    /// Media type of the manifest (from the body, else from the response's `Content-Type`).
    #[serde(default)]
    pub media_type: String,
    /// `artifactType`, if set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    /// The image config blob.
    pub config: Descriptor,
    /// Layers, bottom first.
    #[serde(default)]
    pub layers: Vec<Descriptor>,
    /// `subject`, if set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Descriptor>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// An image index (OCI index or Docker manifest list).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageIndex {
    /// Always 2.
    pub schema_version: u32,
    /// Media type of the index.
    #[serde(default)]
    pub media_type: String,
    /// Child manifests.
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// A parsed manifest body.
#[derive(Debug, Clone)]
pub enum Manifest {
    /// A single-platform image manifest.
    Image(Box<ImageManifest>),
    /// A multi-platform index.
    Index(ImageIndex),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Probe {
    #[serde(default)]
    schema_version: Option<u32>,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<serde_json::Value>,
    #[serde(default)]
    config: Option<serde_json::Value>,
}

/// Most layers an image manifest may list: each is a download and a pass of the applier, and
/// Docker's own storage stops at 128.
pub const MAX_LAYERS: usize = 256;

/// Parses a manifest or index body. `content_type` is the HTTP `Content-Type` (or the
/// descriptor's media type) and is used when the body carries no `mediaType`; `what` names
/// the manifest (reference or digest) in errors.
pub fn parse_manifest(
    bytes: &[u8],
    content_type: Option<&str>,
    what: &str,
) -> Result<Manifest, Error> {
    if bytes.len() > MAX_MANIFEST_BYTES {
        return Err(Error::TooLarge {
            what: format!("manifest {what}"),
            limit: MAX_MANIFEST_BYTES as u64,
        });
    }
    let invalid = |reason: String| Error::InvalidManifest {
        what: what.to_owned(),
        reason,
    };
    let probe: Probe = serde_json::from_slice(bytes).map_err(|e| invalid(e.to_string()))?;
    if probe.schema_version == Some(1) {
        return Err(Error::UnsupportedSchema1 {
            what: what.to_owned(),
        });
    }
    let media_type = probe
        .media_type
        .clone()
        .filter(|m| !m.is_empty())
        .or_else(|| content_type.map(|c| media_types::essence(c).to_owned()))
        .filter(|m| !m.is_empty() && m != "application/json" && m != "application/octet-stream");
    let kind = match &media_type {
        Some(m) => media_types::classify_manifest(m),
        // No media type anywhere: infer from the shape (OCI allows omitting it).
        None if probe.manifests.is_some() => ManifestKind::Index,
        None if probe.config.is_some() => ManifestKind::Image,
        None => ManifestKind::Unknown,
    };
    let media_type_str = media_type.clone().unwrap_or_default();
    match kind {
        ManifestKind::Schema1 => Err(Error::UnsupportedSchema1 {
            what: what.to_owned(),
        }),
        ManifestKind::Unknown => Err(Error::UnsupportedMediaType {
            what: format!("manifest {what}"),
            media_type: if media_type_str.is_empty() {
                "(none)".to_owned()
            } else {
                media_type_str
            },
        }),
        ManifestKind::Image => {
            let mut m: ImageManifest =
                serde_json::from_slice(bytes).map_err(|e| invalid(e.to_string()))?;
            if m.schema_version != 2 {
                return Err(invalid(format!(
                    "unsupported schemaVersion {}",
                    m.schema_version
                )));
            }
            if m.layers.len() > MAX_LAYERS {
                return Err(invalid(format!(
                    "{} layers; at most {MAX_LAYERS} are imported (overlay filesystems stop at 128)",
                    m.layers.len()
                )));
            }
            if m.media_type.is_empty() {
                m.media_type = media_type_str;
            }
            Ok(Manifest::Image(Box::new(m)))
        }
        ManifestKind::Index => {
            let mut i: ImageIndex =
                serde_json::from_slice(bytes).map_err(|e| invalid(e.to_string()))?;
            if i.schema_version != 2 {
                return Err(invalid(format!(
                    "unsupported schemaVersion {}",
                    i.schema_version
                )));
            }
            if i.media_type.is_empty() {
                i.media_type = media_type_str;
            }
            Ok(Manifest::Index(i))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn image_json(mt: Option<&str>) -> String {
        let mt = mt
            .map(|m| format!(r#""mediaType":"{m}","#))
            .unwrap_or_default();
        format!(
            r#"{{"schemaVersion":2,{mt}"config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{D}","size":2}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{D}","size":3,"urls":["https://x/y"]}}]}}"#
        )
    }

    #[test]
    fn an_image_of_too_many_layers_is_refused() {
        let layer = serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": format!("sha256:{}", "a".repeat(64)), "size": 1});
        let manifest = |n: usize| {
            serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": format!("sha256:{}", "b".repeat(64)), "size": 2},
                "layers": vec![layer.clone(); n]}).to_string()
        };
        assert!(parse_manifest(manifest(MAX_LAYERS).as_bytes(), None, "m").is_ok());
        let error = parse_manifest(manifest(MAX_LAYERS + 1).as_bytes(), None, "m")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(error.contains("257 layers"), "{error}");
    }

    #[test]
    fn parses_oci_and_docker_manifests() {
        let Manifest::Image(m) = parse_manifest(
            image_json(Some(media_types::OCI_MANIFEST)).as_bytes(),
            None,
            "t",
        )
        .unwrap() else {
            panic!("not an image")
        };
        assert_eq!(m.layers.len(), 1);
        assert_eq!(m.layers[0].urls, vec!["https://x/y"]);
        let Manifest::Image(m) = parse_manifest(
            image_json(None).as_bytes(),
            Some(media_types::DOCKER_MANIFEST),
            "t",
        )
        .unwrap() else {
            panic!("not an image")
        };
        assert_eq!(m.media_type, media_types::DOCKER_MANIFEST);
        // Without any media type, the shape decides.
        assert!(matches!(
            parse_manifest(image_json(None).as_bytes(), None, "t"),
            Ok(Manifest::Image(_))
        ));
    }

    #[test]
    fn schema1_is_rejected_clearly() {
        let body = r#"{"schemaVersion":1,"name":"x","tag":"y","fsLayers":[]}"#;
        let err = parse_manifest(
            body.as_bytes(),
            Some(media_types::DOCKER_SCHEMA1_SIGNED),
            "x:y",
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("unsupported: docker schema 1 manifest"),
            "{err}"
        );
    }

    #[test]
    fn unknown_media_type_is_named() {
        let body = r#"{"schemaVersion":2,"mediaType":"application/vnd.example.thing+json"}"#;
        let err = parse_manifest(body.as_bytes(), None, "x").unwrap_err();
        assert!(
            err.to_string()
                .contains("application/vnd.example.thing+json"),
            "{err}"
        );
    }

    #[test]
    fn parses_index_platforms() {
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{D}","size":1,"platform":{{"architecture":"amd64","os":"windows","os.version":"10.0.1","os.features":["win32k"]}}}}]}}"#
        );
        let Manifest::Index(i) = parse_manifest(body.as_bytes(), None, "x").unwrap() else {
            panic!("not an index")
        };
        let p = i.manifests[0].platform.as_ref().unwrap();
        assert_eq!(p.os_version.as_deref(), Some("10.0.1"));
        assert_eq!(p.os_features, vec!["win32k"]);
    }
}
