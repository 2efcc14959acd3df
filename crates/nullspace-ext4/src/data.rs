//! File data: streamed into freshly allocated blocks as it arrives, all-zero blocks left as
//! holes in the image file.

use std::io::{ErrorKind, Read};

use xxhash_rust::xxh3::Xxh3;

use crate::alloc::{Allocator, Run};
use crate::extents::{push_run, Extent};
use crate::image::Image;
use crate::layout::BS;
use crate::Error;

/// Bytes read from the input per step (a multiple of the block size).
pub(crate) const CHUNK: usize = 1 << 20;

/// Data already written to the image: its size and where its blocks are.
///
/// Attach it to a node with [`crate::Writer::create_file`] or give the blocks back with
/// [`crate::Writer::release`].
#[derive(Debug, Default)]
pub struct FileData {
    pub(crate) size: u64,
    pub(crate) extents: Vec<Extent>,
    pub(crate) hash: u64,
}

impl FileData {
    /// Size of the data in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The runs of the data, for freeing.
    pub(crate) fn runs(&self) -> impl Iterator<Item = Run> + '_ {
        self.extents.iter().map(|e| Run {
            start: e.start,
            len: u64::from(e.len),
        })
    }
}

/// Reads into `buf` until it is full or the reader ends; returns the bytes read.
fn fill(reader: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match reader.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Streams exactly `data.size` bytes from `reader` into new blocks, appending extents to
/// `data` as it goes (so a caller can free them on error).
pub(crate) fn stream(
    reader: &mut dyn Read,
    data: &mut FileData,
    alloc: &mut Allocator,
    image: &Image,
    buf: &mut [u8],
) -> Result<(), Error> {
    let size = data.size;
    let mut hasher = Xxh3::new();
    let mut done = 0u64;
    while done < size {
        let want = (size - done).min(buf.len() as u64) as usize;
        let got = fill(reader, &mut buf[..want])
            .map_err(|e| Error::io(format!("reading file data at byte {done}"), e))?;
        if got < want {
            return Err(Error::ShortRead {
                expected: size,
                got: done + got as u64,
            });
        }
        hasher.update(&buf[..want]);
        let blocks = want.div_ceil(BS) as u64;
        let first_logical = done / BS as u64;
        let mut b = 0u64;
        while b < blocks {
            let run = alloc.alloc(blocks - b)?;
            push_run(&mut data.extents, first_logical + b, run);
            let lo = b as usize * BS;
            let hi = ((b + run.len) as usize * BS).min(want);
            image.write_blocks(run.start, &buf[lo..hi])?;
            b += run.len;
        }
        done += want as u64;
    }
    data.hash = hasher.digest();
    Ok(())
}
