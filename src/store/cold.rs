//! The cold part of the message log, compressed.
//!
//! A message's JSON is about 460 bytes and half of it compresses well (field
//! names, the author, the text), so the log's older records are moved, in
//! blocks of whole records, into `messages.cold` as zstd frames, and their
//! bytes are punched out of `messages.log` (`fallocate`), which keeps its
//! size: every record keeps its offset, the indexes are untouched, and a
//! read below [`ColdLog::end`] is served from the blocks, byte for byte.
//!
//! A block is written, read back and synced before its bytes leave the log,
//! so a power cut can leave at most a block the log still holds: opening
//! decompresses the last blocks, and drops one that does not decompress
//! while the log still holds its bytes.
//!
//! The file is a run of frames: `magic | log offset (u64) | raw length
//! (u32) | compressed length (u32) | zstd frame`, integers big-endian.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};

const MAGIC: &[u8; 4] = b"SFC1";
const FRAME_HEADER: usize = 20;

/// Raw bytes per block: a read of one cold message decompresses this much.
pub const BLOCK_BYTES: usize = 256 * 1024;

/// Blocks kept decompressed for reads that come back to them.
const CACHED_BLOCKS: usize = 4;

/// zstd's level: higher levels compress these records no smaller (a
/// third of their size either way: ids and signatures do not compress),
/// only slower.
const LEVEL: i32 = 1;

#[derive(Clone, Copy, Debug)]
struct Block {
    log_start: u64,
    raw_len: u32,
    /// Where its zstd frame starts in the cold file.
    data_at: u64,
    comp_len: u32,
}

impl Block {
    fn log_end(&self) -> u64 {
        self.log_start + u64::from(self.raw_len)
    }
}

/// The compressed blocks, and the log offset they cover up to.
pub struct ColdLog {
    file: File,
    blocks: RwLock<Vec<Block>>,
    cache: Mutex<Vec<(u64, Arc<Vec<u8>>)>>,
    sealing: Mutex<()>,
}

/// Blocks as a reader sees them: held while it reads the log's own bytes
/// too, so that none is punched out between its look here and its read.
pub struct ColdView<'a> {
    cold: &'a ColdLog,
    blocks: RwLockReadGuard<'a, Vec<Block>>,
}

impl ColdLog {
    /// Opens (or creates) the cold file at `path` beside `log`. Blocks that
    /// do not decompress, at the end, are dropped when `log` still holds
    /// their bytes (a power cut came before they were synced).
    pub fn open(path: &Path, log: &File) -> io::Result<ColdLog> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let file_len = file.metadata()?.len();
        if file_len == 0 {
            // Its name must outlive a power cut before any block's bytes
            // leave the log.
            if let Some(dir) = path.parent() {
                File::open(dir)?.sync_all()?;
            }
        }
        let mut blocks: Vec<Block> = Vec::new();
        let mut at = 0u64;
        let mut header = [0u8; FRAME_HEADER];
        while at + FRAME_HEADER as u64 <= file_len {
            file.read_exact_at(&mut header, at)?;
            let block = Block {
                log_start: be_u64(&header[4..12]),
                raw_len: be_u32(&header[12..16]),
                data_at: at + FRAME_HEADER as u64,
                comp_len: be_u32(&header[16..20]),
            };
            let expected_start = blocks.last().map_or(0, Block::log_end);
            let fits = block.data_at + u64::from(block.comp_len) <= file_len;
            if &header[..4] != MAGIC
                || block.log_start != expected_start
                || block.raw_len == 0
                || !fits
            {
                break;
            }
            blocks.push(block);
            at = block.data_at + u64::from(block.comp_len);
        }
        let cold = ColdLog {
            file,
            blocks: RwLock::new(Vec::new()),
            cache: Mutex::new(Vec::new()),
            sealing: Mutex::new(()),
        };
        // The last blocks written may not have reached the disk whole.
        let mut keep = blocks.len();
        let mut checked = 0u64;
        for (i, block) in blocks.iter().enumerate().rev() {
            if checked >= super::log::SEAL_BYTES {
                break;
            }
            checked += u64::from(block.raw_len);
            if cold.decompress(block).is_err() {
                keep = i;
            }
        }
        if keep < blocks.len() {
            let dropped = blocks[keep];
            if !log_holds(log, &dropped)? {
                return Err(io::Error::other(format!(
                    "the compressed block at log offset {} is damaged and the log no longer holds it",
                    dropped.log_start
                )));
            }
            tracing::warn!(
                "dropping {} compressed blocks of the message log that a power cut left unfinished; the log still holds them",
                blocks.len() - keep
            );
            blocks.truncate(keep);
        }
        let end_at = blocks
            .last()
            .map_or(0, |b| b.data_at + u64::from(b.comp_len));
        if end_at < file_len {
            cold.file.set_len(end_at)?;
        }
        if let Some(last) = blocks.last() {
            // A power cut between a block's sync and the punch leaves the
            // log's copy: punch again (holes punched already cost nothing).
            punch_hole(log, 0, last.log_end());
        }
        *cold.blocks.write().unwrap_or_else(|e| e.into_inner()) = blocks;
        Ok(cold)
    }

    /// The blocks for one read.
    pub fn view(&self) -> ColdView<'_> {
        ColdView {
            cold: self,
            blocks: self.blocks.read().unwrap_or_else(|e| e.into_inner()),
        }
    }

    /// The log offset the blocks cover up to.
    pub fn end(&self) -> u64 {
        self.view().end()
    }

    /// Compresses `raw`, the log's bytes from `from` (which must be
    /// [`ColdLog::end`]), whole records cut at `cuts` (offsets within `raw`
    /// where blocks end), syncs them, and then punches them out of `log`.
    pub fn seal(&self, log: &File, from: u64, raw: &[u8], cuts: &[usize]) -> io::Result<()> {
        let _one_at_a_time = self.sealing.lock().unwrap_or_else(|e| e.into_inner());
        let (start, file_end) = {
            let blocks = self.blocks.read().unwrap_or_else(|e| e.into_inner());
            let last = blocks.last();
            (
                last.map_or(0, Block::log_end),
                last.map_or(0, |b| b.data_at + u64::from(b.comp_len)),
            )
        };
        if start != from {
            return Err(io::Error::other("the compressed part grew meanwhile"));
        }
        // Frames a failed seal left past the last block would be read at
        // the next open as blocks, and end the scan before the new ones.
        self.file.set_len(file_end)?;
        let mut frames = Vec::new();
        let mut new_blocks = Vec::new();
        let mut compressor = zstd::bulk::Compressor::new(LEVEL)?;
        compressor.include_checksum(true)?;
        let mut piece_start = 0;
        for &piece_end in cuts {
            let piece = &raw[piece_start..piece_end];
            let compressed = compressor.compress(piece)?;
            let back = zstd::bulk::decompress(&compressed, piece.len())?;
            if back != piece {
                return Err(io::Error::other("a compressed block did not read back"));
            }
            let block = Block {
                log_start: start + piece_start as u64,
                raw_len: u32::try_from(piece.len()).map_err(io::Error::other)?,
                data_at: file_end + (frames.len() + FRAME_HEADER) as u64,
                comp_len: u32::try_from(compressed.len()).map_err(io::Error::other)?,
            };
            frames.extend_from_slice(MAGIC);
            frames.extend_from_slice(&block.log_start.to_be_bytes());
            frames.extend_from_slice(&block.raw_len.to_be_bytes());
            frames.extend_from_slice(&block.comp_len.to_be_bytes());
            frames.extend_from_slice(&compressed);
            new_blocks.push(block);
            piece_start = piece_end;
        }
        let Some(last) = new_blocks.last().copied() else {
            return Ok(());
        };
        self.file.write_all_at(&frames, file_end)?;
        self.file.sync_data()?;
        // Readers that looked before this see the log's bytes, which stay
        // until they are done: the punch waits for the write lock.
        self.blocks
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .extend(new_blocks);
        punch_hole(log, start, last.log_end());
        Ok(())
    }

    /// The decompressed bytes of `block`.
    fn decompress(&self, block: &Block) -> io::Result<Vec<u8>> {
        let mut compressed = vec![0u8; block.comp_len as usize];
        self.file.read_exact_at(&mut compressed, block.data_at)?;
        let raw = zstd::bulk::decompress(&compressed, block.raw_len as usize)?;
        if raw.len() != block.raw_len as usize {
            return Err(io::Error::other(format!(
                "compressed block at log offset {} holds {} bytes, not {}",
                block.log_start,
                raw.len(),
                block.raw_len
            )));
        }
        Ok(raw)
    }

    fn cached(&self, block: &Block) -> io::Result<Arc<Vec<u8>>> {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = cache
            .iter()
            .position(|(start, _)| *start == block.log_start)
        {
            let hit = cache.remove(i);
            let bytes = hit.1.clone();
            cache.insert(0, hit);
            return Ok(bytes);
        }
        drop(cache);
        let bytes = Arc::new(self.decompress(block)?);
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        // Another reader may have put it there meanwhile.
        cache.retain(|(start, _)| *start != block.log_start);
        cache.insert(0, (block.log_start, bytes.clone()));
        cache.truncate(CACHED_BLOCKS);
        Ok(bytes)
    }
}

impl ColdView<'_> {
    /// The log offset the blocks cover up to.
    pub fn end(&self) -> u64 {
        self.blocks.last().map_or(0, Block::log_end)
    }

    /// Fills the start of `buf` with the log's bytes from `offset` that
    /// the blocks hold; returns how many.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let mut done = 0;
        while done < buf.len() {
            let at = offset + done as u64;
            let i = self.blocks.partition_point(|b| b.log_start <= at);
            let Some(block) = i.checked_sub(1).and_then(|i| self.blocks.get(i)) else {
                break;
            };
            if at >= block.log_end() {
                break;
            }
            let bytes = self.cold.cached(block)?;
            let from = (at - block.log_start) as usize;
            let n = (bytes.len() - from).min(buf.len() - done);
            buf[done..done + n].copy_from_slice(&bytes[from..from + n]);
            done += n;
        }
        Ok(done)
    }
}

/// Whether `log` still holds `block`'s bytes: no punched (all-zero) page
/// in them. A record is never a page of zeros, and the punch frees whole
/// pages only, so a block whose bytes were punched shows one unless it is
/// shorter than a page.
fn log_holds(log: &File, block: &Block) -> io::Result<bool> {
    const PAGE: usize = 4096;
    let mut bytes = vec![0u8; block.raw_len as usize];
    log.read_exact_at(&mut bytes, block.log_start)?;
    let skip = (block.log_start.div_ceil(PAGE as u64) * PAGE as u64 - block.log_start) as usize;
    let punched = bytes
        .get(skip..)
        .unwrap_or_default()
        .chunks_exact(PAGE)
        .any(|page| page.iter().all(|b| *b == 0));
    Ok(!punched && bytes.iter().any(|b| *b != 0))
}

/// Frees the whole pages of `file` between `from` and `to`, keeping its
/// size. A filesystem that cannot is left as it is: the log then keeps
/// its copy too.
fn punch_hole(file: &File, from: u64, to: u64) {
    const PAGE: u64 = 4096;
    let start = from.div_ceil(PAGE) * PAGE;
    let end = to / PAGE * PAGE;
    if end <= start {
        return;
    }
    if let Err(e) = crate::platform::punch_hole(file, start, end - start) {
        tracing::debug!("could not free the compressed part of the message log: {e}");
    }
}

fn be_u64(bytes: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[..8]);
    u64::from_be_bytes(b)
}

fn be_u32(bytes: &[u8]) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&bytes[..4]);
    u32::from_be_bytes(b)
}
