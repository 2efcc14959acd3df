//! `docker save` archives (`manifest.json` with `Config`, `RepoTags`, `Layers`).

use std::io::Read;
use std::path::Path;

use serde::Deserialize;

use super::archive::import_tar;
use crate::config::MAX_CONFIG_BYTES;
use crate::digest::Digest;
use crate::error::Error;
use crate::manifest::{Descriptor, ImageManifest};
use crate::media_types;
use crate::platform::Platform;
use crate::reference::Reference;
use crate::resolved::{check_config_blob, ImageSource, ResolvedImage};
use crate::store::BlobStore;

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SaveEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// Opens a `docker save` tar: imports its files into `store` (named by content digest),
/// selects the image tagged `tag` (`None` when the archive holds one image) and synthesises an
/// OCI manifest for it. `manifest_digest` is the digest of that synthesised manifest.
pub fn open_docker_archive(
    tar_path: &Path,
    tag: Option<&str>,
    platform: &Platform,
    store: &BlobStore,
) -> Result<ResolvedImage, Error> {
    let invalid = |reason: String| Error::InvalidLocalImage {
        path: tar_path.to_owned(),
        reason,
    };
    let contents = import_tar(tar_path, store, &["manifest.json"], false)?;
    let raw = contents.small.get("manifest.json").ok_or_else(|| {
        invalid("no manifest.json in the archive (is it a docker save archive?)".into())
    })?;
    let entries: Vec<SaveEntry> =
        serde_json::from_slice(raw).map_err(|e| invalid(format!("invalid manifest.json: {e}")))?;
    let all_tags = || {
        entries
            .iter()
            .flat_map(|e| e.repo_tags.iter().flatten().cloned())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let entry = match tag {
        Some(t) => {
            let wanted = Reference::parse(t).ok();
            entries
                .iter()
                .find(|e| {
                    e.repo_tags.iter().flatten().any(|rt| {
                        rt == t || (wanted.is_some() && Reference::parse(rt).ok() == wanted)
                    })
                })
                .ok_or_else(|| invalid(format!("no image tagged {t:?}; tags: {}", all_tags())))?
        }
        None if entries.len() == 1 => entries
            .first()
            .ok_or_else(|| invalid("empty manifest.json".into()))?,
        None => {
            return Err(invalid(format!(
                "several images; name one of: {}",
                all_tags()
            )))
        }
    };
    let file = |name: &str| {
        contents
            .files
            .get(name.trim_start_matches("./"))
            .cloned()
            .ok_or_else(|| {
                invalid(format!(
                    "{name} is listed in manifest.json but missing from the archive"
                ))
            })
    };
    let (config_digest, config_size) = file(&entry.config)?;
    if config_size > MAX_CONFIG_BYTES {
        return Err(invalid(format!(
            "{} is larger than {MAX_CONFIG_BYTES} bytes",
            entry.config
        )));
    }
    let config_raw = store.read(&config_digest, MAX_CONFIG_BYTES)?;
    let mut layers = Vec::new();
    for name in &entry.layers {
        let (digest, size) = file(name)?;
        layers.push(descriptor(sniff_layer(store, &digest)?, digest, size));
    }
    let manifest = ImageManifest {
        schema_version: 2,
        media_type: media_types::OCI_MANIFEST.to_owned(),
        artifact_type: None,
        config: descriptor(media_types::DOCKER_CONFIG, config_digest, config_size),
        layers,
        subject: None,
        annotations: Default::default(),
    };
    let manifest_raw =
        serde_json::to_vec(&manifest).map_err(|e| invalid(format!("serialising manifest: {e}")))?;
    let what = tar_path.display().to_string();
    let (config, platform) = check_config_blob(&what, &manifest, &config_raw, platform)?;
    Ok(ResolvedImage {
        reference: entry
            .repo_tags
            .iter()
            .flatten()
            .find_map(|t| Reference::parse(t).ok()),
        manifest_digest: Digest::sha256_of(&manifest_raw),
        index_digest: None,
        manifest_raw,
        manifest,
        config_raw,
        config,
        platform,
        source: ImageSource::DockerArchive(tar_path.to_owned()),
    })
}

fn descriptor(media_type: &str, digest: Digest, size: u64) -> Descriptor {
    Descriptor {
        media_type: media_type.to_owned(),
        digest,
        size,
        urls: vec![],
        annotations: Default::default(),
        platform: None,
    }
}

/// The layer media type from the blob's first bytes (docker saves plain tars; some tools save
/// compressed layers).
fn sniff_layer(store: &BlobStore, digest: &Digest) -> Result<&'static str, Error> {
    let mut magic = [0u8; 4];
    let mut f = store.open(digest)?;
    let n = f
        .read(&mut magic)
        .map_err(|e| Error::io(store.path(digest), e))?;
    Ok(match magic.get(..n) {
        Some([0x1f, 0x8b, ..]) => media_types::OCI_LAYER_GZIP,
        Some([0x28, 0xb5, 0x2f, 0xfd]) => media_types::OCI_LAYER_ZSTD,
        _ => media_types::OCI_LAYER_TAR,
    })
}
