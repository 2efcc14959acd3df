//! The output file: positional writes that skip all-zero blocks, and hole punching.

use std::fs::File;
use std::os::unix::fs::FileExt;

use crate::layout::{BLOCK_SIZE, BS};
use crate::Error;

/// The image file being written. Everything not written stays a hole (reads as zeros).
#[derive(Debug)]
pub(crate) struct Image {
    file: File,
}

impl Image {
    /// Takes ownership of `file` and truncates it.
    pub(crate) fn new(file: File) -> Result<Image, Error> {
        file.set_len(0)
            .map_err(|e| Error::io("truncating the image file", e))?;
        Ok(Image { file })
    }

    /// Writes `data` at block `block`, skipping every all-zero 4 KiB block so the file stays
    /// sparse. `data` need not be a whole number of blocks.
    pub(crate) fn write_blocks(&self, block: u64, data: &[u8]) -> Result<(), Error> {
        let mut run_start: Option<usize> = None;
        let mut off = 0usize;
        while off < data.len() {
            let end = (off + BS).min(data.len());
            let zero = is_zero(&data[off..end]);
            match (zero, run_start) {
                (true, Some(start)) => {
                    self.write_at(block, start, &data[start..off])?;
                    run_start = None;
                }
                (false, None) => run_start = Some(off),
                _ => {}
            }
            off = end;
        }
        if let Some(start) = run_start {
            self.write_at(block, start, &data[start..])?;
        }
        Ok(())
    }

    /// Writes `data` at byte `offset` of the image, zero or not.
    pub(crate) fn write_raw(&self, offset: u64, data: &[u8]) -> Result<(), Error> {
        self.file
            .write_all_at(data, offset)
            .map_err(|e| Error::io(format!("writing image at byte {offset}"), e))
    }

    fn write_at(&self, block: u64, start: usize, data: &[u8]) -> Result<(), Error> {
        self.write_raw(block * BLOCK_SIZE + start as u64, data)
    }

    /// Gives blocks back to the host: punches a hole (or, where the host filesystem cannot,
    /// writes zeros) so freed data neither takes space nor leaks into the image.
    pub(crate) fn punch(&self, block: u64, len: u64) -> Result<(), Error> {
        use rustix::fs::{fallocate, FallocateFlags};
        let offset = block * BLOCK_SIZE;
        let bytes = len * BLOCK_SIZE;
        let flags = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
        if fallocate(&self.file, flags, offset, bytes).is_ok() {
            return Ok(());
        }
        let size = self
            .file
            .metadata()
            .map_err(|e| Error::io("reading the image size", e))?
            .len();
        let zeros = vec![0u8; 1 << 20];
        let mut pos = offset;
        let end = (offset + bytes).min(size);
        while pos < end {
            let n = (end - pos).min(zeros.len() as u64) as usize;
            self.write_raw(pos, &zeros[..n])?;
            pos += n as u64;
        }
        Ok(())
    }

    /// Sets the final length of the image.
    pub(crate) fn set_len(&self, bytes: u64) -> Result<(), Error> {
        self.file
            .set_len(bytes)
            .map_err(|e| Error::io(format!("setting the image size to {bytes} bytes"), e))
    }
}

/// Whether every byte of `data` is zero.
pub(crate) fn is_zero(data: &[u8]) -> bool {
    // OR-fold in u64 words; the compiler vectorises this loop.
    let words = data.chunks_exact(8);
    let tail = words.remainder();
    let acc = words.fold(0u64, |acc, w| {
        let mut b = [0u8; 8];
        b.copy_from_slice(w);
        acc | u64::from_ne_bytes(b)
    });
    acc == 0 && tail.iter().all(|&b| b == 0)
}
