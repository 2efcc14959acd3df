//! OCI archives: an OCI image layout packed in a tar (BuildKit `--output type=oci`).

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::Path;

use super::{check_layout_version, resolve_from_index};
use crate::digest::Digest;
use crate::error::Error;
use crate::manifest::MAX_MANIFEST_BYTES;
use crate::media_types;
use crate::platform::Platform;
use crate::resolved::{ImageSource, ResolvedImage};
use crate::store::BlobStore;

/// Opens an OCI archive: imports every blob in it into `store` (each verified against its
/// file name), then selects the image as [`super::open_oci_layout`] does.
pub fn open_oci_archive(
    tar_path: &Path,
    tag_or_digest: Option<&str>,
    platform: &Platform,
    store: &BlobStore,
) -> Result<ResolvedImage, Error> {
    let contents = import_tar(tar_path, store, &["oci-layout", "index.json"], true)?;
    let small = &contents.small;
    let get = |name: &str| {
        small.get(name).ok_or_else(|| Error::InvalidLocalImage {
            path: tar_path.to_owned(),
            reason: format!("no {name} in the archive (is it an oci archive?)"),
        })
    };
    check_layout_version(tar_path, get("oci-layout")?)?;
    let read_blob = |d: &Digest, limit: u64| store.read(d, limit);
    let image = resolve_from_index(
        tar_path,
        get("index.json")?,
        tag_or_digest,
        platform,
        &read_blob,
        ImageSource::OciArchive(tar_path.to_owned()),
    )?;
    // Every layer must come in the archive itself: the store is shared, and a manifest naming
    // a digest the archive does not bring must never be completed with someone else's blob.
    for l in &image.manifest.layers {
        if !contents.blobs.contains(&l.digest) || !store.contains_sized(&l.digest, l.size) {
            let hint = if media_types::is_non_distributable(&l.media_type) {
                " (a non-distributable layer: local images must bring it)"
            } else {
                ""
            };
            return Err(Error::InvalidLocalImage {
                path: tar_path.to_owned(),
                reason: format!("layer {} is missing from the archive{hint}", l.digest),
            });
        }
    }
    Ok(image)
}

/// What a pass over a tar produced.
pub(crate) struct TarContents {
    /// Small metadata files by name.
    pub small: HashMap<String, Vec<u8>>,
    /// Other regular files: name → (digest, size) in the store (docker archives only).
    pub files: HashMap<String, (Digest, u64)>,
    /// The blobs the tar brought (`blobs/<alg>/<hex>` entries, OCI archives only).
    pub blobs: std::collections::HashSet<Digest>,
}

/// Streams once through a tar: files named in `small_names` are kept in memory; with
/// `blobs_by_name`, `blobs/<alg>/<hex>` entries are imported verified against their name;
/// otherwise every other regular file is imported under its content digest.
pub(crate) fn import_tar(
    tar_path: &Path,
    store: &BlobStore,
    small_names: &[&str],
    blobs_by_name: bool,
) -> Result<TarContents, Error> {
    let file = File::open(tar_path).map_err(|e| Error::io(tar_path, e))?;
    let mut archive = tar::Archive::new(file);
    let invalid = |reason: String| Error::InvalidLocalImage {
        path: tar_path.to_owned(),
        reason,
    };
    let mut out = TarContents {
        small: HashMap::new(),
        files: HashMap::new(),
        blobs: std::collections::HashSet::new(),
    };
    let entries = archive
        .entries()
        .map_err(|e| invalid(format!("not a tar archive: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| invalid(format!("reading tar: {e}")))?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = {
            let raw = entry.path_bytes();
            let s = String::from_utf8_lossy(&raw).into_owned();
            s.trim_start_matches("./").to_owned()
        };
        let size = entry.size();
        if small_names.contains(&name.as_str()) {
            if size > MAX_MANIFEST_BYTES as u64 {
                return Err(invalid(format!(
                    "{name} is larger than {MAX_MANIFEST_BYTES} bytes"
                )));
            }
            let mut buf = Vec::new();
            entry
                .read_to_end(&mut buf)
                .map_err(|e| invalid(format!("reading {name}: {e}")))?;
            out.small.insert(name, buf);
        } else if blobs_by_name {
            let Some(rest) = name.strip_prefix("blobs/") else {
                continue;
            };
            let Some((alg, hex)) = rest.split_once('/') else {
                continue;
            };
            let digest: Digest = format!("{alg}:{hex}")
                .parse()
                .map_err(|e| invalid(format!("{name}: {e}")))?;
            store.import(&mut entry, &digest, size)?;
            out.blobs.insert(digest);
        } else {
            let (digest, n) = store.import_unverified(&mut entry)?;
            out.files.insert(name, (digest, n));
        }
    }
    Ok(out)
}
