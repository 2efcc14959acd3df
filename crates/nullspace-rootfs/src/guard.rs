//! A reader between the decompressor and the tar parser that enforces the layer's bounds.
//!
//! The `tar` crate reads GNU long names, long links and PAX records whole into memory and trusts
//! the sizes their headers declare; it also refuses some headers (bad checksums, sparse entries)
//! with messages that name neither the entry nor the rule. This guard walks the same headers
//! first, with the same interpretation the `tar` crate uses (its own `Header` and
//! `PaxExtensions` types), and stops the stream before the parser sees a header that breaks a
//! bound. It also bounds the entries of an image, its uncompressed bytes and the data after the
//! end of each archive, and stops when the build is cancelled.

use std::io::{self, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::rules::Rule;

/// Tar block size.
const BLOCK: usize = 512;
/// Bytes of a long name or link kept to name the entry in errors.
const NAME_KEPT: usize = 4096;

/// Bounds on what one image's layers may contain, so a hostile layer cannot exhaust memory,
/// disk or time.
#[derive(Clone, Debug)]
pub struct ImportLimits {
    /// Largest GNU long name/link or PAX record (the `tar` crate holds these in memory).
    pub max_metadata_record_bytes: u64,
    /// Most entries (files, directories, links, whiteouts) in all layers together.
    pub max_entries: u64,
    /// Most uncompressed bytes in all layers together.
    pub max_uncompressed_bytes: u64,
    /// Most bytes after a layer's end-of-archive marker (writers pad to a 10 KiB record).
    pub max_trailing_bytes: u64,
}

impl Default for ImportLimits {
    /// 1 MiB records, 1,000,000 entries, 64 GiB uncompressed, 1 MiB after the end marker.
    fn default() -> Self {
        ImportLimits {
            max_metadata_record_bytes: 1024 * 1024,
            max_entries: 1_000_000,
            max_uncompressed_bytes: 64 * 1024 * 1024 * 1024,
            max_trailing_bytes: 1024 * 1024,
        }
    }
}

/// A bound the stream broke, with the entry it broke it at.
#[derive(Clone, Debug)]
pub(crate) struct Violation {
    /// The entry's path as the headers give it (empty before the first entry).
    pub entry: String,
    /// The rule.
    pub rule: Rule,
}

/// How much of the image's budget the layers so far used.
#[derive(Clone, Debug, Default)]
pub(crate) struct Usage {
    /// Entries seen.
    pub entries: u64,
    /// Uncompressed bytes read.
    pub bytes: u64,
}

/// What the guard is waiting for.
enum State {
    /// Collecting a 512-byte header (`filled` bytes so far).
    Header { filled: usize },
    /// Passing `remaining` bytes of an entry's data and padding through.
    Data { remaining: u64 },
    /// After the end-of-archive marker: counting what follows.
    Ended { trailing: u64 },
}

/// What the data of the current extension header is captured for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Capture {
    None,
    LongName,
    Pax,
}

/// The guarding reader.
pub(crate) struct TarGuard<R> {
    inner: R,
    limits: ImportLimits,
    usage: Usage,
    stop: Option<Arc<AtomicBool>>,
    violation: Arc<Mutex<Option<Violation>>>,
    state: State,
    header: [u8; BLOCK],
    capture: Capture,
    captured: Vec<u8>,
    capture_left: u64,
    long_name: Option<Vec<u8>>,
    pax_path: Option<Vec<u8>>,
    pax_size: Option<u64>,
    last_entry: String,
}

impl<R: Read> TarGuard<R> {
    /// Guards `inner`, continuing the image's `usage`; a violation is stored in `violation`
    /// (the `tar` crate may wrap or replace the I/O error it becomes).
    pub(crate) fn new(
        inner: R,
        limits: ImportLimits,
        usage: Usage,
        stop: Option<Arc<AtomicBool>>,
        violation: Arc<Mutex<Option<Violation>>>,
    ) -> Self {
        TarGuard {
            inner,
            limits,
            usage,
            stop,
            violation,
            state: State::Header { filled: 0 },
            header: [0; BLOCK],
            capture: Capture::None,
            captured: Vec::new(),
            capture_left: 0,
            long_name: None,
            pax_path: None,
            pax_size: None,
            last_entry: String::new(),
        }
    }

    /// The image's usage including this layer.
    pub(crate) fn usage(&self) -> Usage {
        self.usage.clone()
    }

    fn refuse(&self, entry: String, rule: Rule) -> io::Error {
        let message = format!("entry {entry:?}: {rule}");
        if let Ok(mut slot) = self.violation.lock() {
            slot.get_or_insert(Violation { entry, rule });
        }
        io::Error::new(io::ErrorKind::InvalidData, message)
    }

    /// Walks `bytes` (just read) through the header state machine.
    fn inspect(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            match self.state {
                State::Ended { trailing } => {
                    let trailing = trailing + bytes.len() as u64;
                    if trailing > self.limits.max_trailing_bytes {
                        return Err(self.refuse(
                            self.last_entry.clone(),
                            Rule::TrailingData(self.limits.max_trailing_bytes),
                        ));
                    }
                    self.state = State::Ended { trailing };
                    return Ok(());
                }
                State::Data { remaining } => {
                    let take = (bytes.len() as u64).min(remaining) as usize;
                    if self.capture != Capture::None && self.capture_left > 0 {
                        let keep = (take as u64).min(self.capture_left) as usize;
                        self.captured.extend_from_slice(&bytes[..keep]);
                        self.capture_left -= keep as u64;
                    }
                    bytes = &bytes[take..];
                    let remaining = remaining - take as u64;
                    self.state = State::Data { remaining };
                    if remaining == 0 {
                        self.end_capture();
                        self.state = State::Header { filled: 0 };
                    }
                }
                State::Header { filled } => {
                    let take = (BLOCK - filled).min(bytes.len());
                    self.header[filled..filled + take].copy_from_slice(&bytes[..take]);
                    bytes = &bytes[take..];
                    if filled + take < BLOCK {
                        self.state = State::Header {
                            filled: filled + take,
                        };
                    } else {
                        self.state = self.next_state()?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Checks a complete header and says what follows it.
    fn next_state(&mut self) -> io::Result<State> {
        if self.header.iter().all(|b| *b == 0) {
            // The `tar` crate stops at the first zero block; everything after it is padding.
            return Ok(State::Ended { trailing: 0 });
        }
        let header = tar::Header::from_byte_slice(&self.header);
        let name = self.entry_name(header);
        self.last_entry = name.clone();
        let sum: u32 = self.header[..148]
            .iter()
            .chain(&self.header[156..])
            .map(|b| u32::from(*b))
            .sum::<u32>()
            + 8 * 32;
        match header.cksum() {
            Ok(declared) if declared == sum => {}
            _ => return Err(self.refuse(name, Rule::BadHeader("checksum mismatch"))),
        }
        let entry_type = header.entry_type();
        let recognized = header.as_ustar().is_some() || header.as_gnu().is_some();
        let extension = entry_type.is_gnu_longname()
            || entry_type.is_gnu_longlink()
            || entry_type.is_pax_local_extensions()
            || entry_type.is_pax_global_extensions();
        let Ok(mut size) = header.entry_size() else {
            return Err(self.refuse(name, Rule::BadHeader("size field is not a number")));
        };
        if extension {
            if size > self.limits.max_metadata_record_bytes {
                return Err(self.refuse(
                    name,
                    Rule::MetadataRecordTooLarge {
                        size,
                        limit: self.limits.max_metadata_record_bytes,
                    },
                ));
            }
            self.capture = match () {
                _ if !recognized => Capture::None,
                _ if entry_type.is_gnu_longname() => Capture::LongName,
                _ if entry_type.is_pax_local_extensions() => Capture::Pax,
                _ => Capture::None,
            };
            self.captured.clear();
            self.capture_left = size;
        } else {
            if entry_type.is_gnu_sparse() {
                return Err(self.refuse(name, Rule::SparseEntry));
            }
            self.usage.entries += 1;
            if self.usage.entries > self.limits.max_entries {
                return Err(self.refuse(name, Rule::TooManyEntries(self.limits.max_entries)));
            }
            if let Some(pax_size) = self.pax_size.take() {
                size = pax_size;
            }
            self.long_name = None;
            self.pax_path = None;
            self.capture = Capture::None;
        }
        let padded = size
            .checked_add(BLOCK as u64 - 1)
            .map(|s| s & !(BLOCK as u64 - 1))
            .ok_or_else(|| {
                self.refuse(self.last_entry.clone(), Rule::BadHeader("size overflows"))
            })?;
        if padded == 0 {
            self.end_capture();
            return Ok(State::Header { filled: 0 });
        }
        Ok(State::Data { remaining: padded })
    }

    /// Records what an extension header's data says about the next entry.
    fn end_capture(&mut self) {
        match self.capture {
            Capture::None => {}
            Capture::LongName => {
                let end = self
                    .captured
                    .iter()
                    .position(|b| *b == 0)
                    .unwrap_or(self.captured.len());
                self.long_name = Some(self.captured[..end.min(NAME_KEPT)].to_vec());
            }
            Capture::Pax => {
                for extension in tar::PaxExtensions::new(&self.captured).flatten() {
                    if extension.key_bytes() == b"path" {
                        let value = extension.value_bytes();
                        self.pax_path = Some(value[..value.len().min(NAME_KEPT)].to_vec());
                    }
                }
                self.pax_size = tar_pax_size(&self.captured);
            }
        }
        self.capture = Capture::None;
        self.captured = Vec::new();
    }

    /// The path of the entry a header starts, as the `tar` crate will report it.
    fn entry_name(&self, header: &tar::Header) -> String {
        let bytes = self
            .pax_path
            .clone()
            .or_else(|| self.long_name.clone())
            .unwrap_or_else(|| header.path_bytes().into_owned());
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// The PAX `size` override exactly as the `tar` crate computes it: the first `size` record,
/// and none at all if any record before it is malformed or its value is not a number.
fn tar_pax_size(records: &[u8]) -> Option<u64> {
    for extension in tar::PaxExtensions::new(records) {
        let extension = extension.ok()?;
        if extension.key() != Ok("size") {
            continue;
        }
        return extension.value().ok()?.parse::<u64>().ok();
    }
    None
}

impl<R: Read> Read for TarGuard<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self
            .stop
            .as_ref()
            .is_some_and(|s| s.load(Ordering::Relaxed))
        {
            // Not `Interrupted`: readers retry that kind, and the import would spin.
            return Err(io::Error::other("the build was stopped"));
        }
        let n = self.inner.read(buf)?;
        self.usage.bytes += n as u64;
        if self.usage.bytes > self.limits.max_uncompressed_bytes {
            return Err(self.refuse(
                self.last_entry.clone(),
                Rule::ImageTooLarge(self.limits.max_uncompressed_bytes),
            ));
        }
        self.inspect(&buf[..n])?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(
        data: &[u8],
        limits: ImportLimits,
    ) -> (TarGuard<&[u8]>, Arc<Mutex<Option<Violation>>>) {
        let slot = Arc::new(Mutex::new(None));
        (
            TarGuard::new(data, limits, Usage::default(), None, slot.clone()),
            slot,
        )
    }

    fn header(name: &str, kind: tar::EntryType, size: u64) -> tar::Header {
        let mut header = tar::Header::new_ustar();
        header.set_path(name).unwrap_or_default();
        header.set_entry_type(kind);
        header.set_size(size);
        header.set_mode(0o644);
        header.set_cksum();
        header
    }

    fn read_all(mut guard: TarGuard<&[u8]>) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        // Small reads, to cross header boundaries at odd places.
        let mut buf = [0u8; 97];
        loop {
            let n = guard.read(&mut buf)?;
            if n == 0 {
                return Ok(out);
            }
            out.extend_from_slice(&buf[..n]);
        }
    }

    #[test]
    fn a_well_formed_archive_passes_unchanged() {
        let mut builder = tar::Builder::new(Vec::new());
        let mut h = header("a.txt", tar::EntryType::Regular, 5);
        builder.append(&h, &b"hello"[..]).unwrap_or_default();
        h = header("d/", tar::EntryType::Directory, 0);
        builder.append(&h, &b""[..]).unwrap_or_default();
        builder
            .append_data(
                &mut header("x", tar::EntryType::Regular, 3),
                "a/very/long/name/".repeat(20),
                &b"abc"[..],
            )
            .unwrap_or_default();
        let data = builder.into_inner().unwrap_or_default();
        let (g, slot) = guard(&data, ImportLimits::default());
        assert_eq!(read_all(g).ok(), Some(data));
        assert!(slot.lock().map(|s| s.is_none()).unwrap_or(false));
    }

    #[test]
    fn an_oversized_long_name_record_is_refused_before_the_parser_reads_it() {
        let mut data = header("././@LongLink", tar::EntryType::GNULongName, 1 << 40)
            .as_bytes()
            .to_vec();
        data.extend_from_slice(&[b'a'; 2048]);
        let (g, slot) = guard(&data, ImportLimits::default());
        assert!(read_all(g).is_err());
        let violation = slot.lock().ok().and_then(|s| s.clone());
        assert!(matches!(
            violation.map(|v| v.rule),
            Some(Rule::MetadataRecordTooLarge { size, .. }) if size == 1 << 40
        ));
    }

    #[test]
    fn sparse_entries_and_bad_checksums_name_the_entry() {
        let mut sparse = tar::Header::new_gnu();
        sparse.set_path("holes.bin").unwrap_or_default();
        sparse.set_entry_type(tar::EntryType::GNUSparse);
        sparse.set_size(0);
        sparse.set_cksum();
        let (g, slot) = guard(sparse.as_bytes(), ImportLimits::default());
        assert!(read_all(g).is_err());
        let v = slot.lock().ok().and_then(|s| s.clone());
        assert_eq!(v.as_ref().map(|v| v.entry.as_str()), Some("holes.bin"));
        assert_eq!(v.map(|v| v.rule), Some(Rule::SparseEntry));

        let mut bad = header("etc/passwd", tar::EntryType::Regular, 0)
            .as_bytes()
            .to_vec();
        bad[0] = b'E';
        let (g, slot) = guard(&bad, ImportLimits::default());
        assert!(read_all(g).is_err());
        let v = slot.lock().ok().and_then(|s| s.clone());
        assert_eq!(v.as_ref().map(|v| v.entry.as_str()), Some("Etc/passwd"));
        assert_eq!(
            v.map(|v| v.rule),
            Some(Rule::BadHeader("checksum mismatch"))
        );
    }

    #[test]
    fn entries_bytes_and_trailing_data_are_bounded() {
        let mut data = Vec::new();
        for i in 0..5 {
            data.extend_from_slice(header(&format!("f{i}"), tar::EntryType::Regular, 0).as_bytes());
        }
        let limits = ImportLimits {
            max_entries: 4,
            ..ImportLimits::default()
        };
        let (g, slot) = guard(&data, limits);
        assert!(read_all(g).is_err());
        let v = slot.lock().ok().and_then(|s| s.clone());
        assert_eq!(v.as_ref().map(|v| v.entry.as_str()), Some("f4"));
        assert_eq!(v.map(|v| v.rule), Some(Rule::TooManyEntries(4)));

        let mut ended = header("f", tar::EntryType::Regular, 0).as_bytes().to_vec();
        ended.extend(std::iter::repeat_n(0u8, 4 * BLOCK));
        let limits = ImportLimits {
            max_trailing_bytes: 1024,
            ..ImportLimits::default()
        };
        let (g, slot) = guard(&ended, limits.clone());
        assert!(read_all(g).is_err());
        let v = slot.lock().ok().and_then(|s| s.clone());
        assert_eq!(v.map(|v| v.rule), Some(Rule::TrailingData(1024)));
        ended.truncate(3 * BLOCK);
        let (g, _) = guard(&ended, limits);
        assert!(read_all(g).is_ok());

        let big = vec![0u8; 10 * BLOCK];
        let limits = ImportLimits {
            max_uncompressed_bytes: 4 * BLOCK as u64,
            ..ImportLimits::default()
        };
        let (g, slot) = guard(&big, limits);
        assert!(read_all(g).is_err());
        let v = slot.lock().ok().and_then(|s| s.clone());
        assert_eq!(
            v.map(|v| v.rule),
            Some(Rule::ImageTooLarge(4 * BLOCK as u64))
        );
    }

    #[test]
    fn a_pax_size_override_keeps_the_guard_in_step_with_the_parser() {
        // The PAX record says the next entry has 1024 bytes although its header says 0.
        let mut builder = tar::Builder::new(Vec::new());
        builder
            .append_pax_extensions([("size", &b"1024"[..])])
            .unwrap_or_default();
        let h = header("big", tar::EntryType::Regular, 0);
        builder.append(&h, &b""[..]).unwrap_or_default();
        let mut data = builder.into_inner().unwrap_or_default();
        // 1024 bytes of "data" that look like two headers of a sparse entry if misread.
        let mut fake = tar::Header::new_gnu();
        fake.set_path("fake").unwrap_or_default();
        fake.set_entry_type(tar::EntryType::GNUSparse);
        fake.set_cksum();
        let end = data.len() - 2 * BLOCK;
        data.truncate(end);
        data.extend_from_slice(fake.as_bytes());
        data.extend_from_slice(fake.as_bytes());
        data.extend(std::iter::repeat_n(0u8, 2 * BLOCK));
        let (g, slot) = guard(&data, ImportLimits::default());
        assert!(
            read_all(g).is_ok(),
            "{:?}",
            slot.lock().ok().and_then(|s| s.clone())
        );
        let mut archive = tar::Archive::new(&data[..]);
        let sizes: Vec<u64> = archive
            .entries()
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.size())
            .collect();
        assert_eq!(sizes, vec![1024]);
    }
}
