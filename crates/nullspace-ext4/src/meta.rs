//! Public metadata types: timestamps, owners, modes and extended attributes of a node.

/// A point in time as seconds since the Unix epoch plus nanoseconds.
///
/// ext4's extra time fields cover 1901-12-13 to 2446-05-10; times outside are clamped to that
/// range, and `nanos` above 999,999,999 is clamped too.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Timestamp {
    /// Seconds since 1970-01-01T00:00:00Z (negative before).
    pub secs: i64,
    /// Nanoseconds within the second.
    pub nanos: u32,
}

impl Timestamp {
    /// Earliest representable second (-2^31).
    const MIN_SECS: i64 = -(1 << 31);
    /// Latest representable second (2^34 - 2^31 - 1).
    const MAX_SECS: i64 = (1 << 34) - (1 << 31) - 1;

    /// A timestamp with whole seconds.
    pub fn from_secs(secs: i64) -> Timestamp {
        Timestamp { secs, nanos: 0 }
    }

    /// The on-disk pair: the 32-bit seconds field and the extra field (epoch bits + nanos).
    pub(crate) fn encode(self) -> (u32, u32) {
        let secs = self.secs.clamp(Self::MIN_SECS, Self::MAX_SECS);
        let nanos = self.nanos.min(999_999_999);
        let low = secs as i32;
        let epoch = ((secs - i64::from(low)) >> 32) & 3;
        (low as u32, epoch as u32 | (nanos << 2))
    }
}

/// Ownership, permissions, times and extended attributes of a node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metadata {
    /// Permission bits including setuid, setgid and sticky (`0o7777`); other bits are ignored,
    /// the file type comes from the node's kind.
    pub mode: u32,
    /// Owner (32 bits).
    pub uid: u32,
    /// Group (32 bits).
    pub gid: u32,
    /// Access time.
    pub atime: Timestamp,
    /// Modification time.
    pub mtime: Timestamp,
    /// Change time (also written as the creation time).
    pub ctime: Timestamp,
    /// Extended attributes by full name (`security.capability`, `user.foo`, `trusted.x`,
    /// `system.posix_acl_access`, `system.posix_acl_default`) and value. POSIX ACLs are given
    /// in the Linux xattr format (version 2) and stored in ext4's own format.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Metadata {
    /// Metadata with the given permission bits, owned by root, all times zero, no xattrs.
    pub fn with_mode(mode: u32) -> Metadata {
        Metadata {
            mode,
            ..Metadata::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Timestamp;

    fn decode(low: u32, extra: u32) -> (i64, u32) {
        (
            i64::from(low as i32) + (i64::from(extra & 3) << 32),
            extra >> 2,
        )
    }

    #[test]
    fn time_round_trip() {
        for secs in [
            0i64,
            1,
            -1,
            1_700_000_000,
            (1 << 31) - 1,
            1 << 31,
            (1 << 32) + 5,
            -(1 << 31),
            (1 << 34) - (1 << 31) - 1,
        ] {
            let t = Timestamp {
                secs,
                nanos: 123_456_789,
            };
            let (lo, ex) = t.encode();
            assert_eq!(decode(lo, ex), (secs, 123_456_789), "{secs}");
        }
        let (lo, ex) = Timestamp::from_secs(i64::MAX).encode();
        assert_eq!(decode(lo, ex).0, (1 << 34) - (1 << 31) - 1);
        let (lo, ex) = Timestamp::from_secs(i64::MIN).encode();
        assert_eq!(decode(lo, ex).0, -(1 << 31));
    }
}
