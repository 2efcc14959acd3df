//! Local image sources: OCI image layout directories, OCI archives (a layout in a tar, as
//! exported by BuildKit `--output type=oci`) and `docker save` archives.
//!
//! Every source imports the blobs it uses into the [`BlobStore`] (verified), so the caller
//! reads layers from the store exactly as after a registry pull.

mod archive;
mod docker;

use std::fs::File;
use std::path::Path;

use serde::Deserialize;

use crate::config::MAX_CONFIG_BYTES;
use crate::digest::Digest;
use crate::error::Error;
use crate::manifest::{
    parse_manifest, Descriptor, ImageIndex, Manifest, MAX_MANIFEST_BYTES, REF_NAME_ANNOTATION,
};
use crate::media_types::{self, ManifestKind};
use crate::platform::{self, Platform};
use crate::reference::Reference;
use crate::resolved::{check_config_blob, ImageSource, ResolvedImage};
use crate::store::BlobStore;

pub use archive::open_oci_archive;
pub use docker::open_docker_archive;

/// containerd's annotation with the full image name.
const CONTAINERD_NAME_ANNOTATION: &str = "io.containerd.image.name";

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct OciLayoutFile {
    image_layout_version: String,
}

/// Opens an OCI image layout directory (`oci-layout`, `index.json`, `blobs/`), selects the
/// image named `tag_or_digest` (a `ref.name` annotation, a full image name or a manifest
/// digest; `None` when the layout holds one image) for `platform`, and imports its config and
/// layers into `store`.
pub fn open_oci_layout(
    dir: &Path,
    tag_or_digest: Option<&str>,
    platform: &Platform,
    store: &BlobStore,
) -> Result<ResolvedImage, Error> {
    let read_file = |name: &str| -> Result<Vec<u8>, Error> {
        let p = dir.join(name);
        std::fs::read(&p).map_err(|e| Error::io(p, e))
    };
    check_layout_version(dir, &read_file("oci-layout")?)?;
    let index_raw = read_file("index.json")?;
    let blob_path = |d: &Digest| dir.join("blobs").join(d.algorithm().as_str()).join(d.hex());
    let read_blob = |d: &Digest, limit: u64| -> Result<Vec<u8>, Error> {
        let p = blob_path(d);
        let meta = std::fs::metadata(&p).map_err(|e| Error::io(&p, e))?;
        if meta.len() > limit {
            return Err(Error::TooLarge {
                what: format!("blob {d}"),
                limit,
            });
        }
        let bytes = std::fs::read(&p).map_err(|e| Error::io(&p, e))?;
        verify_bytes(d, &bytes)?;
        Ok(bytes)
    };
    let image = resolve_from_index(
        dir,
        &index_raw,
        tag_or_digest,
        platform,
        &read_blob,
        ImageSource::OciLayout(dir.to_owned()),
    )?;
    for d in std::iter::once(&image.manifest.config).chain(&image.manifest.layers) {
        let p = blob_path(&d.digest);
        match File::open(&p) {
            Ok(f) => {
                store.import(f, &d.digest, d.size)?;
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound
                    && media_types::is_non_distributable(&d.media_type) =>
            {
                tracing::warn!(digest = %d.digest, "non-distributable layer not in the layout; fetch it from its urls");
            }
            Err(e) => return Err(Error::io(p, e)),
        }
    }
    Ok(image)
}

fn check_layout_version(path: &Path, raw: &[u8]) -> Result<(), Error> {
    let layout: OciLayoutFile =
        serde_json::from_slice(raw).map_err(|e| Error::InvalidLocalImage {
            path: path.to_owned(),
            reason: format!("invalid oci-layout file: {e}"),
        })?;
    if !layout.image_layout_version.starts_with("1.") {
        return Err(Error::InvalidLocalImage {
            path: path.to_owned(),
            reason: format!(
                "unsupported imageLayoutVersion {:?}",
                layout.image_layout_version
            ),
        });
    }
    Ok(())
}

fn verify_bytes(d: &Digest, bytes: &[u8]) -> Result<(), Error> {
    if d.matches(bytes) {
        Ok(())
    } else {
        Err(Error::BlobDigestMismatch {
            digest: d.clone(),
            actual: d.same_algorithm_of(bytes),
        })
    }
}

/// The names an `index.json` entry is known by.
fn entry_names(d: &Descriptor) -> Vec<&str> {
    [REF_NAME_ANNOTATION, CONTAINERD_NAME_ANNOTATION]
        .iter()
        .filter_map(|k| d.annotations.get(*k).map(String::as_str))
        .collect()
}

fn entry_matches(d: &Descriptor, wanted: &str) -> bool {
    let wanted_ref = Reference::parse(wanted).ok();
    entry_names(d).into_iter().any(|n| {
        n == wanted
            || n.rsplit_once(':')
                .is_some_and(|(_, tag)| tag == wanted && !wanted.contains('/'))
            || wanted_ref.is_some() && Reference::parse(n).ok() == wanted_ref
    })
}

/// Reads a verified blob (digest, size limit).
pub(crate) type BlobReader<'a> = dyn Fn(&Digest, u64) -> Result<Vec<u8>, Error> + 'a;

/// Resolves an image from an `index.json`, reading (verified) blobs through `read_blob`.
pub(crate) fn resolve_from_index(
    path: &Path,
    index_raw: &[u8],
    tag_or_digest: Option<&str>,
    wanted: &Platform,
    read_blob: &BlobReader<'_>,
    source: ImageSource,
) -> Result<ResolvedImage, Error> {
    let invalid = |reason: String| Error::InvalidLocalImage {
        path: path.to_owned(),
        reason,
    };
    let index: ImageIndex = serde_json::from_slice(index_raw)
        .map_err(|e| invalid(format!("invalid index.json: {e}")))?;
    let usable: Vec<&Descriptor> = index
        .manifests
        .iter()
        .filter(|d| !platform::is_attestation(d))
        .collect();
    let what_base = path.display().to_string();
    let selected: Descriptor = match tag_or_digest {
        Some(s) => match s.parse::<Digest>() {
            Ok(d) => usable
                .iter()
                .find(|e| e.digest == d)
                .map(|e| (*e).clone())
                .unwrap_or(Descriptor {
                    media_type: String::new(),
                    digest: d,
                    size: MAX_MANIFEST_BYTES as u64,
                    urls: vec![],
                    annotations: Default::default(),
                    platform: None,
                }),
            Err(_) => usable
                .iter()
                .find(|e| entry_matches(e, s))
                .map(|e| (*e).clone())
                .ok_or_else(|| {
                    invalid(format!(
                        "no image named {s:?}; names: {}",
                        names_list(&usable)
                    ))
                })?,
        },
        None if usable.len() == 1 => usable
            .first()
            .map(|e| (*e).clone())
            .ok_or_else(|| invalid("empty index.json".into()))?,
        None if !usable.is_empty() && usable.iter().all(|e| e.platform.is_some()) => {
            // A multi-platform layout: index.json itself is the index.
            platform::select(&index, wanted)
                .map_err(|nm| Error::NoMatchingPlatform {
                    what: what_base.clone(),
                    wanted: wanted.to_string(),
                    offered: nm.offered,
                })?
                .clone()
        }
        None if usable.is_empty() => return Err(invalid("index.json lists no image".into())),
        None => {
            return Err(invalid(format!(
                "several images; name one of: {}",
                names_list(&usable)
            )))
        }
    };
    let reference = entry_names(&selected).into_iter().find_map(|n| {
        Reference::parse(n)
            .ok()
            .filter(|_| n.contains('/') || n.contains(':'))
    });
    let what = format!("{what_base}@{}", selected.digest);
    let raw = read_blob(&selected.digest, MAX_MANIFEST_BYTES as u64)?;
    let ctype = Some(selected.media_type.as_str()).filter(|m| !m.is_empty());
    let (manifest_raw, manifest, index_digest) = match parse_manifest(&raw, ctype, &what)? {
        Manifest::Image(m) => (raw, *m, None),
        Manifest::Index(child_index) => {
            let chosen =
                platform::select(&child_index, wanted).map_err(|nm| Error::NoMatchingPlatform {
                    what: what.clone(),
                    wanted: wanted.to_string(),
                    offered: nm.offered,
                })?;
            let child_raw = read_blob(&chosen.digest, MAX_MANIFEST_BYTES as u64)?;
            let child_what = format!("{what_base}@{}", chosen.digest);
            match parse_manifest(&child_raw, Some(&chosen.media_type), &child_what)? {
                Manifest::Image(m) => (child_raw, *m, Some(selected.digest.clone())),
                Manifest::Index(_) => {
                    return Err(invalid(format!(
                        "{child_what}: index entry points to another index"
                    )))
                }
            }
        }
    };
    debug_assert!(media_types::classify_manifest(&manifest.media_type) != ManifestKind::Index);
    let config_raw = read_blob(&manifest.config.digest, MAX_CONFIG_BYTES)?;
    let (config, platform) = check_config_blob(&what, &manifest, &config_raw, wanted)?;
    Ok(ResolvedImage {
        reference,
        manifest_digest: Digest::sha256_of(&manifest_raw),
        index_digest,
        manifest_raw,
        manifest,
        config_raw,
        config,
        platform,
        source,
    })
}

fn names_list(entries: &[&Descriptor]) -> String {
    let names: Vec<String> = entries
        .iter()
        .map(|e| {
            entry_names(e)
                .first()
                .map_or_else(|| e.digest.to_string(), |n| (*n).to_owned())
        })
        .collect();
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(", ")
    }
}
