//! Extended attributes: name-index prefixes, POSIX ACL conversion, and the in-inode and block
//! encodings with their entry and block hashes.

use crate::bytes::{get32, put16, put32};
use crate::layout::{BS, INODE_SIZE, INODE_XATTR_OFFSET};

/// Magic of the in-inode area and of xattr blocks.
const MAGIC: u32 = 0xEA02_0000;
/// Size of the in-inode area (magic included).
pub(crate) const INODE_AREA: usize = INODE_SIZE - INODE_XATTR_OFFSET;
/// Size of an xattr block header.
const BLOCK_HEADER: usize = 32;

/// Why a set of attributes cannot be stored.
#[derive(Debug)]
pub(crate) enum Problem {
    /// One attribute is malformed.
    Invalid {
        /// Its full name.
        name: String,
        /// Why.
        reason: String,
    },
    /// Together they need more than the inode plus one block.
    TooBig {
        /// Bytes needed in the block.
        needed: usize,
        /// Bytes a block offers.
        limit: usize,
    },
}

/// An attribute ready to encode.
struct Attr {
    index: u8,
    name: Vec<u8>,
    value: Vec<u8>,
}

impl Attr {
    fn entry_size(&self) -> usize {
        (16 + self.name.len() + 3) & !3
    }

    fn value_size(&self) -> usize {
        (self.value.len() + 3) & !3
    }
}

/// Where an inode's attributes go.
#[derive(Debug, Default)]
pub(crate) struct Placement {
    /// The in-inode area (written at offset 160 of the inode), if any attribute lives there.
    pub inode: Option<[u8; INODE_AREA]>,
    /// An xattr block (refcount left zero), if needed.
    pub block: Option<Vec<u8>>,
}

fn invalid(name: &[u8], reason: impl Into<String>) -> Problem {
    Problem::Invalid {
        name: String::from_utf8_lossy(name).into_owned(),
        reason: reason.into(),
    }
}

/// Splits a full name into ext4's name index and the stored suffix.
fn split_name(full: &[u8]) -> Result<(u8, &[u8]), Problem> {
    const PREFIXES: [(&[u8], u8); 3] = [(b"user.", 1), (b"trusted.", 4), (b"security.", 6)];
    match full {
        b"system.posix_acl_access" => return Ok((2, b"")),
        b"system.posix_acl_default" => return Ok((3, b"")),
        _ => {}
    }
    for (prefix, index) in PREFIXES {
        if let Some(rest) = full.strip_prefix(prefix) {
            if rest.is_empty() {
                return Err(invalid(full, "empty name after the namespace prefix"));
            }
            if rest.len() > 255 {
                return Err(invalid(full, "name over 255 bytes"));
            }
            return Ok((index, rest));
        }
    }
    Err(invalid(
        full,
        "unsupported namespace (user., trusted., security., system.posix_acl_access|default)",
    ))
}

/// Converts a POSIX ACL from the xattr format (version 2) to ext4's on-disk format (version 1).
fn acl_to_disk(full: &[u8], value: &[u8]) -> Result<Vec<u8>, Problem> {
    if value.len() < 4 || !(value.len() - 4).is_multiple_of(8) {
        return Err(invalid(full, "malformed posix acl (size)"));
    }
    if get32(value, 0) != 2 {
        return Err(invalid(full, "posix acl version is not 2"));
    }
    let mut out = 1u32.to_le_bytes().to_vec();
    for entry in value[4..].chunks_exact(8) {
        let tag = u16::from_le_bytes([entry[0], entry[1]]);
        match tag {
            0x01 | 0x04 | 0x10 | 0x20 => out.extend_from_slice(&entry[..4]),
            0x02 | 0x08 => out.extend_from_slice(entry),
            _ => return Err(invalid(full, format!("unknown posix acl tag {tag:#x}"))),
        }
    }
    Ok(out)
}

fn parse(xattrs: &[(Vec<u8>, Vec<u8>)]) -> Result<Vec<Attr>, Problem> {
    let mut attrs = Vec::with_capacity(xattrs.len());
    for (full, value) in xattrs {
        let (index, name) = split_name(full)?;
        let value = if index == 2 || index == 3 {
            acl_to_disk(full, value)?
        } else {
            value.clone()
        };
        if value.len() > BS {
            return Err(invalid(full, "value larger than a block"));
        }
        attrs.push(Attr {
            index,
            name: name.to_vec(),
            value,
        });
    }
    attrs.sort_by(|a, b| (a.index, a.name.len(), &a.name).cmp(&(b.index, b.name.len(), &b.name)));
    for pair in attrs.windows(2) {
        if pair[0].index == pair[1].index && pair[0].name == pair[1].name {
            return Err(Problem::Invalid {
                name: String::from_utf8_lossy(&pair[0].name).into_owned(),
                reason: "given twice".into(),
            });
        }
    }
    Ok(attrs)
}

/// Space the attributes need in an area: entries, the 4-byte terminator, padded values.
fn needed(attrs: &[Attr]) -> usize {
    attrs
        .iter()
        .map(|a| a.entry_size() + a.value_size())
        .sum::<usize>()
        + 4
}

/// Validates `xattrs` and decides where they go: all in the inode when they fit, otherwise
/// all in one block.
pub(crate) fn place(xattrs: &[(Vec<u8>, Vec<u8>)]) -> Result<Placement, Problem> {
    if xattrs.is_empty() {
        return Ok(Placement::default());
    }
    let attrs = parse(xattrs)?;
    let need = needed(&attrs);
    if need <= INODE_AREA - 4 {
        let mut area = [0u8; INODE_AREA];
        put32(&mut area, 0, MAGIC);
        encode(&mut area[4..], 0, &attrs);
        return Ok(Placement {
            inode: Some(area),
            block: None,
        });
    }
    if need > BS - BLOCK_HEADER {
        return Err(Problem::TooBig {
            needed: need,
            limit: BS - BLOCK_HEADER,
        });
    }
    let mut block = vec![0u8; BS];
    put32(&mut block, 0, MAGIC);
    put32(&mut block, 8, 1);
    let hashes = encode(&mut block, BLOCK_HEADER, &attrs);
    let h = hashes.iter().fold(0u32, |h, &e| (h << 16) ^ (h >> 16) ^ e);
    let h = if hashes.contains(&0) { 0 } else { h };
    put32(&mut block, 12, h);
    Ok(Placement {
        inode: None,
        block: Some(block),
    })
}

/// Sets the reference count of an encoded xattr block.
pub(crate) fn set_refcount(block: &mut [u8], refs: u32) {
    put32(block, 4, refs);
}

/// Encodes entries from `first` and values from the end of `area`; value offsets are relative
/// to the start of `area`. Returns the entry hashes.
fn encode(area: &mut [u8], first: usize, attrs: &[Attr]) -> Vec<u32> {
    let mut pos = first;
    let mut value_end = area.len();
    let mut hashes = Vec::with_capacity(attrs.len());
    for a in attrs {
        let offs = if a.value.is_empty() {
            0
        } else {
            value_end -= a.value_size();
            area[value_end..value_end + a.value.len()].copy_from_slice(&a.value);
            value_end
        };
        let hash = entry_hash(&a.name, &area[offs..offs + a.value_size()]);
        area[pos] = a.name.len() as u8;
        area[pos + 1] = a.index;
        put16(area, pos + 2, offs as u16);
        put32(area, pos + 4, 0);
        put32(area, pos + 8, a.value.len() as u32);
        put32(area, pos + 12, hash);
        area[pos + 16..pos + 16 + a.name.len()].copy_from_slice(&a.name);
        pos += a.entry_size();
        hashes.push(hash);
    }
    hashes
}

/// ext4's entry hash over the name (as signed chars, like the historical kernel) and the
/// zero-padded value words.
fn entry_hash(name: &[u8], padded_value: &[u8]) -> u32 {
    let mut hash = 0u32;
    for &c in name {
        hash = (hash << 5) ^ (hash >> 27) ^ (i32::from(c as i8) as u32);
    }
    for w in padded_value.chunks_exact(4) {
        hash = (hash << 16) ^ (hash >> 16) ^ get32(w, 0);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_goes_in_inode_big_in_block() {
        let p = place(&[(b"user.a".to_vec(), b"b".to_vec())]).unwrap();
        assert!(p.inode.is_some() && p.block.is_none());
        let p = place(&[(b"user.a".to_vec(), vec![7u8; 200])]).unwrap();
        assert!(p.inode.is_none() && p.block.is_some());
        assert!(matches!(
            place(&[(b"user.a".to_vec(), vec![7u8; 4090])]),
            Err(Problem::TooBig { .. })
        ));
        assert!(matches!(
            place(&[(b"bogus.a".to_vec(), vec![])]),
            Err(Problem::Invalid { .. })
        ));
    }
}
