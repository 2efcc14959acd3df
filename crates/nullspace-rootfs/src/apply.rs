//! Applying one layer's tar stream onto the flattened tree, with the OCI layer rules.
//!
//! A later entry replaces an earlier one, a directory over a directory merges metadata, and
//! whiteouts hide what lower layers put there. An opaque whiteout (`.wh..wh..opq`) acts as if it
//! came first in its layer: it hides every lower entry of its directory, but not what this same
//! layer adds there, wherever in the layer the marker appears.

use std::collections::HashSet;
use std::io::Read;

use nullspace_ext4::{Metadata, NodeId, NodeKind, Timestamp, Writer};

use crate::error::RootfsError;
use crate::rules::{classify, is_pax_sparse, normalize_path, resolve_parent, EntryClass, Rule};

/// Prefix that marks a whiteout entry.
const WHITEOUT_PREFIX: &[u8] = b".wh.";
/// The opaque-directory marker.
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
/// Prefix of aufs bookkeeping entries (`.wh..wh.plnk` and friends), which are skipped.
const AUFS_META_PREFIX: &[u8] = b".wh..wh.";

/// Counts of what one layer did.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct LayerStats {
    /// Tar entries read (whiteouts included).
    pub entries: u64,
    /// Regular files written.
    pub files: u64,
    /// Directories created or merged.
    pub directories: u64,
    /// Symlinks created.
    pub symlinks: u64,
    /// Hard links made.
    pub hard_links: u64,
    /// Whiteouts applied (opaque markers included).
    pub whiteouts: u64,
    /// File bytes written.
    pub bytes: u64,
}

/// Applies one layer to `writer`.
pub(crate) struct LayerApplier<'w> {
    writer: &'w mut Writer,
    layer: String,
    /// Entries (directory, name) that this layer wrote or created, which its whiteouts spare.
    touched: HashSet<(NodeId, Vec<u8>)>,
    stats: LayerStats,
}

/// Metadata of directories the layer implies but never lists.
fn implicit_directory() -> Metadata {
    Metadata {
        mode: 0o755,
        ..Metadata::default()
    }
}

impl<'w> LayerApplier<'w> {
    /// Prepares to apply the layer named `layer` (its digest, for errors).
    pub(crate) fn new(writer: &'w mut Writer, layer: &str) -> Self {
        LayerApplier {
            writer,
            layer: layer.to_string(),
            touched: HashSet::new(),
            stats: LayerStats::default(),
        }
    }

    /// Reads the whole tar stream and applies each entry in order.
    pub(crate) fn apply<R: Read>(
        mut self,
        archive: &mut tar::Archive<R>,
    ) -> Result<LayerStats, RootfsError> {
        let entries = archive.entries().map_err(|e| self.corrupt(e))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| self.corrupt(e))?;
            self.stats.entries += 1;
            self.apply_entry(&mut entry)?;
        }
        Ok(self.stats)
    }

    fn corrupt(&self, source: std::io::Error) -> RootfsError {
        RootfsError::Corrupt {
            layer: self.layer.clone(),
            compression: "a tar stream".into(),
            source,
        }
    }

    fn reject(&self, entry: &[u8], rule: Rule) -> RootfsError {
        RootfsError::Rejected {
            layer: self.layer.clone(),
            entry: String::from_utf8_lossy(entry).into_owned(),
            rule,
        }
    }

    fn ext4(&self, entry: &[u8], source: nullspace_ext4::Error) -> RootfsError {
        RootfsError::Ext4 {
            layer: self.layer.clone(),
            entry: String::from_utf8_lossy(entry).into_owned(),
            source,
        }
    }

    fn apply_entry<R: Read>(&mut self, entry: &mut tar::Entry<R>) -> Result<(), RootfsError> {
        let raw_path = entry.path_bytes().into_owned();
        let pax = PaxRecords::read(entry).map_err(|e| self.corrupt(e))?;
        if pax.sparse {
            return Err(self.reject(&raw_path, Rule::SparseEntry));
        }
        let class = classify(entry.header().entry_type()).map_err(|r| self.reject(&raw_path, r))?;
        if class == EntryClass::Ignored {
            return Ok(());
        }
        let mut components = normalize_path(&raw_path).map_err(|r| self.reject(&raw_path, r))?;
        let Some(name) = components.pop() else {
            if class != EntryClass::Directory {
                return Err(self.reject(&raw_path, Rule::RootNotDirectory));
            }
            let meta = pax.metadata(entry.header());
            let root = self.writer.root();
            self.writer
                .set_metadata(root, meta)
                .map_err(|e| self.ext4(&raw_path, e))?;
            self.stats.directories += 1;
            return Ok(());
        };
        if name.starts_with(WHITEOUT_PREFIX) {
            return self.apply_whiteout(&raw_path, &components, &name);
        }
        let parent = self.parent_for_write(&raw_path, &components)?;
        let existing = self.writer.lookup(parent, &name);
        match class {
            EntryClass::Directory => {
                let meta = pax.metadata(entry.header());
                match existing {
                    Some(dir) if self.writer.kind(dir) == NodeKind::Directory => {
                        self.writer
                            .set_metadata(dir, meta)
                            .map_err(|e| self.ext4(&raw_path, e))?;
                    }
                    _ => {
                        self.remove_existing(&raw_path, parent, &name, existing)?;
                        self.writer
                            .create_dir(parent, &name, meta)
                            .map_err(|e| self.ext4(&raw_path, e))?;
                    }
                }
                self.stats.directories += 1;
            }
            EntryClass::File => {
                self.remove_existing(&raw_path, parent, &name, existing)?;
                let meta = pax.metadata(entry.header());
                let size = entry.size();
                let data = self
                    .writer
                    .write_data(entry, size)
                    .map_err(|e| self.ext4(&raw_path, e))?;
                self.writer
                    .create_file(parent, &name, meta, data)
                    .map_err(|e| self.ext4(&raw_path, e))?;
                self.stats.files += 1;
                self.stats.bytes += size;
            }
            EntryClass::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                self.remove_existing(&raw_path, parent, &name, existing)?;
                let meta = pax.metadata(entry.header());
                self.writer
                    .create_symlink(parent, &name, meta, &target)
                    .map_err(|e| self.ext4(&raw_path, e))?;
                self.stats.symlinks += 1;
            }
            EntryClass::HardLink => {
                let target = entry
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                let node = self.hard_link_target(&raw_path, &target)?;
                if existing != Some(node) {
                    self.remove_existing(&raw_path, parent, &name, existing)?;
                    self.writer
                        .link(parent, &name, node)
                        .map_err(|e| self.ext4(&raw_path, e))?;
                }
                self.stats.hard_links += 1;
            }
            EntryClass::Ignored => {}
        }
        self.touched.insert((parent, name));
        Ok(())
    }

    /// Resolves (creating as needed) the directory an entry is written into.
    fn parent_for_write(
        &mut self,
        raw_path: &[u8],
        components: &[Vec<u8>],
    ) -> Result<NodeId, RootfsError> {
        let touched = &mut self.touched;
        let layer = self.layer.clone();
        let mut create = |writer: &mut Writer, dir: NodeId, name: &[u8]| {
            let created = writer
                .create_dir(dir, name, implicit_directory())
                .map_err(|source| RootfsError::Ext4 {
                    layer: layer.clone(),
                    entry: String::from_utf8_lossy(raw_path).into_owned(),
                    source,
                })?;
            touched.insert((dir, name.to_vec()));
            Ok(Some(created))
        };
        match resolve_parent(self.writer, components, &mut create)? {
            Ok(Some(parent)) => Ok(parent),
            Ok(None) => Err(self.reject(raw_path, Rule::ParentNotDirectory(String::new()))),
            Err(rule) => Err(self.reject(raw_path, rule)),
        }
    }

    /// Resolves an existing directory without creating anything; `None` when it is missing.
    fn existing_parent(
        &mut self,
        raw_path: &[u8],
        components: &[Vec<u8>],
    ) -> Result<Option<NodeId>, RootfsError> {
        let mut no_create = |_: &mut Writer, _: NodeId, _: &[u8]| Ok(None);
        match resolve_parent(self.writer, components, &mut no_create)? {
            Ok(found) => Ok(found),
            Err(rule) => Err(self.reject(raw_path, rule)),
        }
    }

    fn remove_existing(
        &mut self,
        raw_path: &[u8],
        parent: NodeId,
        name: &[u8],
        existing: Option<NodeId>,
    ) -> Result<(), RootfsError> {
        if existing.is_some() {
            self.writer
                .remove(parent, name)
                .map_err(|e| self.ext4(raw_path, e))?;
        }
        Ok(())
    }

    /// Finds the node a hard link entry points at: it must exist, inside the rootfs, and not be
    /// a directory. The target's last component is not followed (a link to a symlink links the
    /// symlink itself).
    fn hard_link_target(&mut self, raw_path: &[u8], target: &[u8]) -> Result<NodeId, RootfsError> {
        let shown = || String::from_utf8_lossy(target).into_owned();
        let mut components =
            normalize_path(target).map_err(|_| self.reject(raw_path, Rule::HardLinkEscapesRoot))?;
        let Some(name) = components.pop() else {
            return Err(self.reject(raw_path, Rule::HardLinkToDirectory(shown())));
        };
        let node = self
            .existing_parent(raw_path, &components)?
            .and_then(|dir| self.writer.lookup(dir, &name))
            .ok_or_else(|| self.reject(raw_path, Rule::HardLinkTargetMissing(shown())))?;
        if self.writer.kind(node) == NodeKind::Directory {
            return Err(self.reject(raw_path, Rule::HardLinkToDirectory(shown())));
        }
        Ok(node)
    }

    fn apply_whiteout(
        &mut self,
        raw_path: &[u8],
        components: &[Vec<u8>],
        name: &[u8],
    ) -> Result<(), RootfsError> {
        self.stats.whiteouts += 1;
        if name == OPAQUE_MARKER {
            let dir = self.parent_for_write(raw_path, components)?;
            self.hide_lower_entries(dir)?;
            return Ok(());
        }
        if name.starts_with(AUFS_META_PREFIX) {
            return Ok(());
        }
        let hidden = &name[WHITEOUT_PREFIX.len()..];
        if hidden.is_empty() || hidden == b"." || hidden == b".." {
            return Err(self.reject(raw_path, Rule::InvalidWhiteout));
        }
        let Some(dir) = self.existing_parent(raw_path, components)? else {
            return Ok(());
        };
        let key = (dir, hidden.to_vec());
        if self.writer.lookup(dir, hidden).is_some() && !self.touched.contains(&key) {
            self.writer
                .remove(dir, hidden)
                .map_err(|e| self.ext4(raw_path, e))?;
        }
        Ok(())
    }

    /// Removes every entry under `dir` that lower layers put there, keeping what this layer
    /// wrote (and the directories leading to it). Returns whether anything was kept.
    fn hide_lower_entries(&mut self, dir: NodeId) -> Result<bool, RootfsError> {
        let children: Vec<(Vec<u8>, NodeId)> = self
            .writer
            .entries(dir)
            .map(|(name, node)| (name.to_vec(), node))
            .collect();
        let mut kept = false;
        for (name, child) in children {
            let is_dir = self.writer.kind(child) == NodeKind::Directory;
            let touched = self.touched.contains(&(dir, name.clone()));
            let keep = if touched {
                if is_dir {
                    self.hide_lower_entries(child)?;
                }
                true
            } else {
                is_dir && self.hide_lower_entries(child)?
            };
            if keep {
                kept = true;
            } else {
                self.writer
                    .remove(dir, &name)
                    .map_err(|e| self.ext4(&name, e))?;
            }
        }
        Ok(kept)
    }
}

/// What an entry's PAX records say beyond what the tar crate already applies (path, link path,
/// size): precise times, large ids, xattrs, and whether it is sparse.
#[derive(Default)]
struct PaxRecords {
    mtime: Option<Timestamp>,
    atime: Option<Timestamp>,
    ctime: Option<Timestamp>,
    uid: Option<u32>,
    gid: Option<u32>,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    sparse: bool,
}

impl PaxRecords {
    fn read<R: Read>(entry: &mut tar::Entry<R>) -> std::io::Result<PaxRecords> {
        let mut records = PaxRecords::default();
        let Some(extensions) = entry.pax_extensions()? else {
            return Ok(records);
        };
        for extension in extensions {
            let extension = extension?;
            let key = extension.key_bytes();
            let value = extension.value_bytes();
            if is_pax_sparse(key) {
                records.sparse = true;
            }
            match key {
                b"mtime" => records.mtime = parse_pax_time(value),
                b"atime" => records.atime = parse_pax_time(value),
                b"ctime" => records.ctime = parse_pax_time(value),
                b"uid" => records.uid = parse_decimal(value),
                b"gid" => records.gid = parse_decimal(value),
                _ => {
                    if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                        records.xattrs.push((name.to_vec(), value.to_vec()));
                    } else if let Some(name) = key.strip_prefix(b"LIBARCHIVE.xattr.") {
                        use base64::Engine as _;
                        if let (Some(name), Ok(value)) = (
                            percent_decode(name),
                            base64::engine::general_purpose::STANDARD_NO_PAD
                                .decode(value.strip_suffix(b"=").unwrap_or(value)),
                        ) {
                            if !records.xattrs.iter().any(|(n, _)| *n == name) {
                                records.xattrs.push((name, value));
                            }
                        }
                    }
                }
            }
        }
        Ok(records)
    }

    /// The entry's metadata: the header's, overridden by the PAX records.
    fn metadata(&self, header: &tar::Header) -> Metadata {
        let header_mtime = Timestamp {
            secs: header.mtime().map(|t| t as i64).unwrap_or(0),
            nanos: 0,
        };
        let mtime = self.mtime.unwrap_or(header_mtime);
        Metadata {
            mode: header.mode().unwrap_or(0o644) & 0o7777,
            uid: self
                .uid
                .or_else(|| header.uid().ok().and_then(|v| u32::try_from(v).ok()))
                .unwrap_or(0),
            gid: self
                .gid
                .or_else(|| header.gid().ok().and_then(|v| u32::try_from(v).ok()))
                .unwrap_or(0),
            atime: self.atime.unwrap_or(mtime),
            mtime,
            ctime: self.ctime.unwrap_or(mtime),
            xattrs: self.xattrs.clone(),
        }
    }
}

fn parse_decimal(value: &[u8]) -> Option<u32> {
    std::str::from_utf8(value).ok()?.trim().parse().ok()
}

/// Parses a PAX time (`seconds[.fraction]`, possibly negative) to the nanosecond.
fn parse_pax_time(value: &[u8]) -> Option<Timestamp> {
    let text = std::str::from_utf8(value).ok()?.trim();
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    let secs: i64 = whole.parse().ok()?;
    if !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut nanos_text: String = fraction.chars().take(9).collect();
    while nanos_text.len() < 9 {
        nanos_text.push('0');
    }
    let nanos: u32 = nanos_text.parse().ok()?;
    Some(if !negative {
        Timestamp { secs, nanos }
    } else if nanos == 0 {
        Timestamp {
            secs: -secs,
            nanos: 0,
        }
    } else {
        Timestamp {
            secs: -secs - 1,
            nanos: 1_000_000_000 - nanos,
        }
    })
}

/// Decodes libarchive's %-escaped xattr names.
fn percent_decode(name: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(name.len());
    let mut i = 0;
    while i < name.len() {
        if name[i] == b'%' {
            let hex = name.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
            i += 3;
        } else {
            out.push(name[i]);
            i += 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_times_keep_nanoseconds_and_handle_negatives() {
        assert_eq!(
            parse_pax_time(b"1700000000.123456789"),
            Some(Timestamp {
                secs: 1_700_000_000,
                nanos: 123_456_789
            })
        );
        assert_eq!(
            parse_pax_time(b"12.5"),
            Some(Timestamp {
                secs: 12,
                nanos: 500_000_000
            })
        );
        assert_eq!(
            parse_pax_time(b"-1.25"),
            Some(Timestamp {
                secs: -2,
                nanos: 750_000_000
            })
        );
        assert_eq!(
            parse_pax_time(b"-3"),
            Some(Timestamp { secs: -3, nanos: 0 })
        );
        assert_eq!(parse_pax_time(b"abc"), None);
    }

    #[test]
    fn libarchive_names_are_percent_decoded() {
        assert_eq!(percent_decode(b"user.a%3Db").unwrap(), b"user.a=b");
    }
}
