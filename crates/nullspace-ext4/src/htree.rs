//! The directory-index hash: half-MD4 with the superblock's seed, unsigned characters
//! (the superblock sets `EXT2_FLAGS_UNSIGNED_HASH`).

/// `EXT4_HTREE_EOF_32BIT`.
const HTREE_EOF_32: u32 = 0x7fff_ffff;
const K2: u32 = 0o13240474631;
const K3: u32 = 0o15666365641;

/// The seed as the hash's initial state; an all-zero seed means the MD4 defaults.
pub(crate) fn seed_words(seed: &[u8; 16]) -> [u32; 4] {
    let mut w = [0u32; 4];
    for (i, word) in w.iter_mut().enumerate() {
        let mut b = [0u8; 4];
        b.copy_from_slice(&seed[4 * i..4 * i + 4]);
        *word = u32::from_le_bytes(b);
    }
    if w.iter().all(|&x| x == 0) {
        [0x67452301, 0xefcdab89, 0x98badcfe, 0x10325476]
    } else {
        w
    }
}

/// Packs up to `4 * num` bytes of `msg` into words, padding with a length-derived pattern.
fn str2hashbuf(msg: &[u8], num: usize) -> [u32; 8] {
    let len = msg.len() as u32;
    let mut pad = len | (len << 8);
    pad |= pad << 16;
    let mut out = [pad; 8];
    let mut val = pad;
    let mut idx = 0;
    for (i, &byte) in msg.iter().take(num * 4).enumerate() {
        val = u32::from(byte).wrapping_add(val << 8);
        if i % 4 == 3 {
            out[idx] = val;
            idx += 1;
            val = pad;
        }
    }
    if idx < num {
        out[idx] = val;
    }
    out
}

fn half_md4_transform(buf: &mut [u32; 4], input: &[u32; 8]) {
    let f = |x: u32, y: u32, z: u32| z ^ (x & (y ^ z));
    let g = |x: u32, y: u32, z: u32| (x & y).wrapping_add((x ^ y) & z);
    let h = |x: u32, y: u32, z: u32| x ^ y ^ z;
    let [mut a, mut b, mut c, mut d] = *buf;
    macro_rules! round {
        ($f:expr, $a:ident, $b:ident, $c:ident, $d:ident, $x:expr, $s:expr) => {
            $a = $a
                .wrapping_add($f($b, $c, $d))
                .wrapping_add($x)
                .rotate_left($s);
        };
    }
    let x = input;
    round!(f, a, b, c, d, x[0], 3);
    round!(f, d, a, b, c, x[1], 7);
    round!(f, c, d, a, b, x[2], 11);
    round!(f, b, c, d, a, x[3], 19);
    round!(f, a, b, c, d, x[4], 3);
    round!(f, d, a, b, c, x[5], 7);
    round!(f, c, d, a, b, x[6], 11);
    round!(f, b, c, d, a, x[7], 19);

    round!(g, a, b, c, d, x[1].wrapping_add(K2), 3);
    round!(g, d, a, b, c, x[3].wrapping_add(K2), 5);
    round!(g, c, d, a, b, x[5].wrapping_add(K2), 9);
    round!(g, b, c, d, a, x[7].wrapping_add(K2), 13);
    round!(g, a, b, c, d, x[0].wrapping_add(K2), 3);
    round!(g, d, a, b, c, x[2].wrapping_add(K2), 5);
    round!(g, c, d, a, b, x[4].wrapping_add(K2), 9);
    round!(g, b, c, d, a, x[6].wrapping_add(K2), 13);

    round!(h, a, b, c, d, x[3].wrapping_add(K3), 3);
    round!(h, d, a, b, c, x[7].wrapping_add(K3), 9);
    round!(h, c, d, a, b, x[2].wrapping_add(K3), 11);
    round!(h, b, c, d, a, x[6].wrapping_add(K3), 15);
    round!(h, a, b, c, d, x[1].wrapping_add(K3), 3);
    round!(h, d, a, b, c, x[5].wrapping_add(K3), 9);
    round!(h, c, d, a, b, x[0].wrapping_add(K3), 11);
    round!(h, b, c, d, a, x[4].wrapping_add(K3), 15);

    buf[0] = buf[0].wrapping_add(a);
    buf[1] = buf[1].wrapping_add(b);
    buf[2] = buf[2].wrapping_add(c);
    buf[3] = buf[3].wrapping_add(d);
}

/// The `(major, minor)` half-MD4 hash of `name`; the major hash has its low bit clear.
pub(crate) fn name_hash(name: &[u8], seed: &[u32; 4]) -> (u32, u32) {
    let mut buf = *seed;
    let mut rest = name;
    while !rest.is_empty() {
        let input = str2hashbuf(rest, 8);
        half_md4_transform(&mut buf, &input);
        rest = &rest[rest.len().min(32)..];
    }
    let mut hash = buf[1] & !1;
    if hash == HTREE_EOF_32 << 1 {
        hash = (HTREE_EOF_32 - 1) << 1;
    }
    (hash, buf[2])
}
