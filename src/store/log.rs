//! The message log: every message's JSON, appended in receive order.
//!
//! The log is the store's source of truth. Each message is written once,
//! here, and sled holds only small index entries that point into it (sled
//! rewrites its nodes many times over, so keeping the bodies out of it cuts
//! the bytes written several-fold).
//!
//! A record is `json length (u32) | message id (32) | received ms (f64) |
//! compact JSON`, integers big-endian. A record's offset is its position in
//! the receive log: unique, and increasing in receive order.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::feed::MsgId;

use super::cold::{ColdLog, BLOCK_BYTES};
use super::{io_error, StoreError};

/// The most raw bytes one [`MessageLog::seal`] compresses.
pub const SEAL_BYTES: u64 = 16 << 20;

/// Bytes before a record's JSON.
pub const HEADER_LEN: usize = 44;

/// Longest JSON a record may hold: far above any valid message (8192
/// UTF-16 units, at most 3 UTF-8 bytes each plus escapes), so anything
/// longer is damage.
const MAX_JSON_LEN: usize = 1 << 16;

/// How much a sequential reader fetches at once: it starts at the first
/// size and doubles with each refill up to the second, so that reading one
/// message costs little and reading many costs few `pread`s.
const FIRST_WINDOW: usize = 16 * 1024;
const MAX_WINDOW: usize = 256 * 1024;

/// One message as the log holds it.
pub struct LogRecord {
    /// The message id.
    pub id: MsgId,
    /// When the store received it, in milliseconds since the epoch.
    pub received_ms: f64,
    /// Its compact JSON.
    pub json: Vec<u8>,
}

/// Appends a record to `out`.
pub fn encode_record(out: &mut Vec<u8>, id: &MsgId, received_ms: f64, json: &[u8]) {
    out.extend_from_slice(&(json.len() as u32).to_be_bytes());
    out.extend_from_slice(&id.0);
    out.extend_from_slice(&received_ms.to_bits().to_be_bytes());
    out.extend_from_slice(json);
}

/// The length of a record holding `json_len` bytes of JSON.
pub fn record_len(json_len: usize) -> u64 {
    (HEADER_LEN + json_len) as u64
}

/// Reads a header: `(json length, id, received ms)`.
fn decode_header(bytes: &[u8]) -> Result<(usize, MsgId, f64), StoreError> {
    if bytes.len() < HEADER_LEN {
        return Err(StoreError::Corrupt("truncated log record".into()));
    }
    let mut len = [0u8; 4];
    len.copy_from_slice(&bytes[..4]);
    let len = u32::from_be_bytes(len) as usize;
    if len == 0 || len > MAX_JSON_LEN {
        return Err(StoreError::Corrupt(format!("log record of {len} bytes")));
    }
    let mut id = [0u8; 32];
    id.copy_from_slice(&bytes[4..36]);
    let mut ms = [0u8; 8];
    ms.copy_from_slice(&bytes[36..44]);
    Ok((len, MsgId(id), f64::from_bits(u64::from_be_bytes(ms))))
}

/// Decodes the record at the start of `bytes`, which must hold all of it.
fn decode_record(bytes: &[u8]) -> Result<LogRecord, StoreError> {
    let (len, id, received_ms) = decode_header(bytes)?;
    let json = bytes
        .get(HEADER_LEN..HEADER_LEN + len)
        .ok_or_else(|| StoreError::Corrupt("truncated log record".into()))?;
    Ok(LogRecord {
        id,
        received_ms,
        json: json.to_vec(),
    })
}

/// The log file, and its older records compressed (`cold.rs`).
pub struct MessageLog {
    file: File,
    cold: ColdLog,
}

impl MessageLog {
    /// Opens (or creates) the log at `path`, with its compressed older
    /// records at `cold`.
    pub fn open(path: &Path, cold: &Path) -> Result<MessageLog, StoreError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io_error)?;
        let cold = ColdLog::open(cold, &file).map_err(io_error)?;
        Ok(MessageLog { file, cold })
    }

    /// The file's length, committed or not.
    pub fn file_len(&self) -> Result<u64, StoreError> {
        Ok(self.file.metadata().map_err(io_error)?.len())
    }

    /// Cuts the file to `len` bytes.
    pub fn truncate(&self, len: u64) -> Result<(), StoreError> {
        if len < self.cold.end() {
            return Err(StoreError::Corrupt(format!(
                "cutting the log to {len} bytes would cut compressed records"
            )));
        }
        self.file.set_len(len).map_err(io_error)
    }

    /// The log offset up to which records are compressed.
    #[cfg(test)]
    pub fn cold_end(&self) -> u64 {
        self.cold.end()
    }

    /// Fills `buf` with the log's bytes at `offset`, compressed or not.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<(), StoreError> {
        let cold = self.cold.view();
        let served = cold.read(offset, buf).map_err(io_error)?;
        self.file
            .read_exact_at(&mut buf[served..], offset + served as u64)
            .map_err(io_error)
    }

    /// Fills as much of `buf` as the log holds at `offset`; returns how much.
    fn read_at_most(&self, buf: &mut [u8], offset: u64) -> Result<usize, StoreError> {
        let cold = self.cold.view();
        let mut filled = cold.read(offset, buf).map_err(io_error)?;
        while filled < buf.len() {
            match self
                .file
                .read_at(&mut buf[filled..], offset + filled as u64)
            {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_error(e)),
            }
        }
        Ok(filled)
    }

    /// Compresses whole records from where the compressed part ends up to
    /// at most `limit` (and at most [`SEAL_BYTES`]), in blocks, and frees
    /// their bytes in the log file; returns how many bytes it compressed.
    /// `limit` must not pass what is durable in the log.
    pub fn seal(&self, limit: u64) -> Result<u64, StoreError> {
        let start = self.cold.end();
        if limit < start + BLOCK_BYTES as u64 {
            return Ok(0);
        }
        let mut raw = vec![0u8; (limit.min(start + SEAL_BYTES) - start) as usize];
        self.read_exact_at(&mut raw, start)?;
        // Blocks end at the first record end past BLOCK_BYTES; a record cut
        // by the end of `raw` waits for the next seal.
        let (mut at, mut block_start) = (0, 0);
        let mut cuts = Vec::new();
        while raw.len() - at >= HEADER_LEN {
            let (json_len, _, _) = decode_header(&raw[at..])?;
            let end = at + HEADER_LEN + json_len;
            if end > raw.len() {
                break;
            }
            at = end;
            if at - block_start >= BLOCK_BYTES {
                cuts.push(at);
                block_start = at;
            }
        }
        let Some(&sealed) = cuts.last() else {
            return Ok(0);
        };
        raw.truncate(sealed);
        self.cold
            .seal(&self.file, start, &raw, &cuts)
            .map_err(io_error)?;
        Ok(sealed as u64)
    }

    /// Writes encoded records at `offset`.
    pub fn write_at(&self, records: &[u8], offset: u64) -> Result<(), StoreError> {
        self.file.write_all_at(records, offset).map_err(io_error)
    }

    /// Makes everything written so far durable.
    pub fn sync(&self) -> Result<(), StoreError> {
        self.file.sync_data().map_err(io_error)
    }

    /// The record at `offset`, whose JSON is `json_len` bytes long.
    pub fn read(&self, offset: u64, json_len: usize) -> Result<LogRecord, StoreError> {
        let mut bytes = vec![0u8; HEADER_LEN + json_len];
        self.read_exact_at(&mut bytes, offset)?;
        let record = decode_record(&bytes)?;
        if record.json.len() != json_len {
            return Err(StoreError::Corrupt(format!("log record at {offset}")));
        }
        Ok(record)
    }

    /// The record at `offset`, length unknown.
    pub fn read_unsized(&self, offset: u64) -> Result<LogRecord, StoreError> {
        let mut header = [0u8; HEADER_LEN];
        self.read_exact_at(&mut header, offset)?;
        let (len, _, _) = decode_header(&header)?;
        self.read(offset, len)
    }

    /// A reader for records at increasing offsets, fetching ahead.
    pub fn reader(&self) -> LogReader<'_> {
        LogReader {
            log: self,
            start: 0,
            buf: Vec::new(),
        }
    }

    /// Every record from `from` to `to`, in order, with its offset. Ends
    /// with an error at the first record that does not decode or does not
    /// fit before `to`.
    pub fn scan(&self, from: u64, to: u64) -> Scan<'_> {
        Scan {
            reader: self.reader(),
            next: from,
            to,
        }
    }
}

/// Reads records through a window of the file, so that records read in
/// log order cost one `pread` per window, not one each.
pub struct LogReader<'a> {
    log: &'a MessageLog,
    start: u64,
    buf: Vec<u8>,
}

impl LogReader<'_> {
    /// The record at `offset`; `json_len` when known.
    pub fn read(&mut self, offset: u64, json_len: Option<usize>) -> Result<LogRecord, StoreError> {
        let header = self.bytes(offset, HEADER_LEN)?;
        let (len, _, _) = decode_header(header)?;
        if json_len.is_some_and(|expected| expected != len) {
            return Err(StoreError::Corrupt(format!("log record at {offset}")));
        }
        decode_record(self.bytes(offset, HEADER_LEN + len)?)
    }

    fn bytes(&mut self, offset: u64, len: usize) -> Result<&[u8], StoreError> {
        let in_window =
            offset >= self.start && offset + len as u64 <= self.start + self.buf.len() as u64;
        if !in_window {
            self.start = offset;
            let window = (self.buf.len() * 2).clamp(FIRST_WINDOW, MAX_WINDOW);
            self.buf.resize(window.max(len), 0);
            let filled = self.log.read_at_most(&mut self.buf, offset)?;
            self.buf.truncate(filled);
            if filled < len {
                return Err(StoreError::Corrupt(format!(
                    "log ends inside the record at {offset}"
                )));
            }
        }
        let at = (offset - self.start) as usize;
        Ok(&self.buf[at..at + len])
    }
}

/// See [`MessageLog::scan`].
pub struct Scan<'a> {
    reader: LogReader<'a>,
    next: u64,
    to: u64,
}

impl Iterator for Scan<'_> {
    type Item = Result<(u64, LogRecord), StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.next >= self.to {
            return None;
        }
        let offset = self.next;
        let record = self.reader.read(offset, None).and_then(|record| {
            let end = offset + record_len(record.json.len());
            if end > self.to {
                return Err(StoreError::Corrupt(format!(
                    "log record at {offset} runs past the end"
                )));
            }
            Ok(record)
        });
        match record {
            Ok(record) => {
                self.next = offset + record_len(record.json.len());
                Some(Ok((offset, record)))
            }
            Err(e) => {
                self.next = self.to;
                Some(Err(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_read_back_directly_through_a_window_and_by_scan() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log =
            MessageLog::open(&dir.path().join("log"), &dir.path().join("cold")).expect("opens");
        let mut bytes = Vec::new();
        let mut offsets = Vec::new();
        for i in 0..5000u32 {
            offsets.push(bytes.len() as u64);
            let json = format!("{{\"n\":{i},\"pad\":\"{}\"}}", "x".repeat(i as usize % 300));
            encode_record(
                &mut bytes,
                &MsgId([i as u8; 32]),
                f64::from(i),
                json.as_bytes(),
            );
        }
        log.write_at(&bytes, 0).expect("writes");
        let end = bytes.len() as u64;

        let scanned: Vec<(u64, LogRecord)> =
            log.scan(0, end).map(|r| r.expect("decodes")).collect();
        assert_eq!(scanned.len(), 5000);
        let mut reader = log.reader();
        for (i, (offset, record)) in scanned.iter().enumerate() {
            assert_eq!(*offset, offsets[i]);
            assert_eq!(record.received_ms, i as f64);
            let direct = log.read(*offset, record.json.len()).expect("reads");
            assert_eq!(direct.json, record.json);
            let windowed = reader
                .read(*offset, Some(record.json.len()))
                .expect("reads");
            assert_eq!(windowed.id, record.id);
            assert_eq!(log.read_unsized(*offset).expect("reads").json, record.json);
        }
    }

    #[test]
    fn a_torn_or_zeroed_tail_ends_the_scan_with_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log =
            MessageLog::open(&dir.path().join("log"), &dir.path().join("cold")).expect("opens");
        let mut bytes = Vec::new();
        encode_record(&mut bytes, &MsgId([1; 32]), 1.0, b"{\"a\":1}");
        let good = bytes.len() as u64;
        encode_record(&mut bytes, &MsgId([2; 32]), 2.0, b"{\"a\":2}");
        // Torn: the second record's last bytes never reached the disk.
        log.write_at(&bytes[..bytes.len() - 3], 0).expect("writes");
        let results: Vec<_> = log.scan(0, bytes.len() as u64).collect();
        assert_eq!(results.len(), 2);
        assert_eq!(results[0].as_ref().map(|(o, _)| *o).ok(), Some(0));
        assert!(results[1].is_err());
        // Zeroed: the file was extended but the data was lost.
        log.write_at(&[0u8; 100], good).expect("writes");
        let results: Vec<_> = log.scan(0, good + 100).collect();
        assert!(results[1].is_err());
    }
}
