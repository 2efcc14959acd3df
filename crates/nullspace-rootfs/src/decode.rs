//! Decompressing a layer on its own thread, hashing the tar stream for its diff_id.
//!
//! Decompression and hashing run on one core while the tar parser and the ext4 writer run on
//! another; a small bounded channel between them keeps memory flat whatever the layer's size.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use sha2::{Digest, Sha256};

use crate::media::Compression;

/// Size of one decompressed chunk handed from the decoder to the applier.
const CHUNK: usize = 256 * 1024;
/// Chunks in flight between the two threads.
const CHUNKS_IN_FLIGHT: usize = 8;

/// Reads the decompressed layer stream produced by [`spawn_decoder`].
pub(crate) struct ChunkReader {
    chunks: Receiver<io::Result<Vec<u8>>>,
    current: Vec<u8>,
    position: usize,
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.position == self.current.len() {
            match self.chunks.recv() {
                Ok(Ok(chunk)) => {
                    self.current = chunk;
                    self.position = 0;
                }
                Ok(Err(err)) => return Err(err),
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len() - self.position);
        buf[..n].copy_from_slice(&self.current[self.position..self.position + n]);
        self.position += n;
        Ok(n)
    }
}

/// Counts the compressed bytes read, for progress reports.
struct CountingReader<R> {
    inner: R,
    count: Arc<AtomicU64>,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// Starts decompressing `path`; returns the stream and a handle yielding the stream's sha256.
///
/// `compressed_read` grows as the blob is read, for progress reports.
pub(crate) fn spawn_decoder(
    path: &Path,
    compression: Compression,
    compressed_read: Arc<AtomicU64>,
) -> io::Result<(ChunkReader, JoinHandle<String>)> {
    let file = File::open(path)?;
    let counted = CountingReader {
        inner: file,
        count: compressed_read,
    };
    let mut decoder: Box<dyn Read + Send> = match compression {
        Compression::None => Box::new(BufReader::with_capacity(CHUNK, counted)),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(BufReader::with_capacity(
            CHUNK, counted,
        ))),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(counted)?),
    };
    let (sender, receiver) = sync_channel(CHUNKS_IN_FLIGHT);
    let handle = std::thread::Builder::new()
        .name("layer-decoder".into())
        .spawn(move || {
            let mut hasher = Sha256::new();
            loop {
                let mut chunk = vec![0u8; CHUNK];
                let mut filled = 0;
                let result = loop {
                    match decoder.read(&mut chunk[filled..]) {
                        Ok(0) => break Ok(()),
                        Ok(n) => {
                            filled += n;
                            if filled == CHUNK {
                                break Ok(());
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => break Err(e),
                    }
                };
                if let Err(err) = result {
                    let _ = sender.send(Err(err));
                    break;
                }
                if filled == 0 {
                    break;
                }
                chunk.truncate(filled);
                hasher.update(&chunk);
                if sender.send(Ok(chunk)).is_err() {
                    break;
                }
            }
            format!("sha256:{}", hex::encode(hasher.finalize()))
        })?;
    Ok((
        ChunkReader {
            chunks: receiver,
            current: Vec::new(),
            position: 0,
        },
        handle,
    ))
}
