//! muxrpc frames over a box stream.
//!
//! kuska-ssb 0.4 keeps its header codec private, and its reader allocates
//! whatever body length a peer claims (up to 4 GiB), so framing is ours.
//!
//! A header is 9 bytes: flags (stream 0b1000, end/error 0b0100, body type
//! in the low two bits: 0 binary, 1 UTF-8, 2 JSON), the body length
//! (u32, big-endian) and the request number (i32, big-endian).

use futures::{AsyncReadExt, AsyncWriteExt};
use serde_json::{json, Value};

const STREAM: u8 = 0b1000;
const END: u8 = 0b0100;
const TYPE_MASK: u8 = 0b0011;
const TYPE_JSON: u8 = 2;

/// Encodes a frame header.
fn encode_header(frame: &Frame) -> [u8; 9] {
    let mut header = [0u8; 9];
    header[0] = if frame.stream { STREAM } else { 0 }
        | if frame.end { END } else { 0 }
        | if frame.json { TYPE_JSON } else { 0 };
    header[1..5].copy_from_slice(&(frame.body.len() as u32).to_be_bytes());
    header[5..9].copy_from_slice(&frame.req.to_be_bytes());
    header
}

/// Decodes a frame header: flags, body length, request number.
fn decode_header(header: &[u8; 9]) -> Result<(u8, u32, i32), FrameError> {
    let flags = header[0];
    if flags & TYPE_MASK == 3 || flags & 0xf0 != 0 {
        return Err(FrameError::BadHeader);
    }
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
    let req = i32::from_be_bytes([header[5], header[6], header[7], header[8]]);
    Ok((flags, len, req))
}

use super::shs::{Reader, Writer};

/// The largest frame body accepted. SSB messages are under 8 KiB of
/// UTF-16 (at most 24 KiB of UTF-8); anything much larger is hostile.
pub const MAX_BODY: u32 = 256 * 1024;

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The connection failed or closed mid-frame.
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    /// A header that does not decode.
    #[error("bad frame header")]
    BadHeader,
    /// A body larger than [`MAX_BODY`].
    #[error("frame of {0} bytes exceeds the {MAX_BODY}-byte limit")]
    Oversize(u32),
}

/// One muxrpc frame.
#[derive(Clone, Debug, PartialEq)]
pub struct Frame {
    /// Request number: positive from the requester, negated in replies.
    pub req: i32,
    /// Part of a stream.
    pub stream: bool,
    /// End of a stream, or an error.
    pub end: bool,
    /// JSON, UTF-8 or binary.
    pub json: bool,
    /// The body.
    pub body: Vec<u8>,
}

impl Frame {
    /// A JSON frame.
    pub fn json(req: i32, stream: bool, end: bool, body: &Value) -> Frame {
        Frame {
            req,
            stream,
            end,
            json: true,
            body: serde_json::to_vec(body).unwrap_or_default(),
        }
    }

    /// A JSON frame whose body is already serialised.
    pub fn raw_json(req: i32, stream: bool, body: Vec<u8>) -> Frame {
        Frame {
            req,
            stream,
            end: false,
            json: true,
            body,
        }
    }

    /// The end of a stream.
    pub fn end(req: i32) -> Frame {
        Frame::json(req, true, true, &Value::Bool(true))
    }

    /// An error reply, as muxrpc peers expect it.
    pub fn error(req: i32, stream: bool, message: &str) -> Frame {
        Frame::json(
            req,
            stream,
            true,
            &json!({"name": "Error", "message": message, "stack": ""}),
        )
    }

    /// The body as JSON, if it is.
    pub fn body_json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// Reads the next frame; `None` when the peer said goodbye.
pub async fn read_frame(reader: &mut Reader) -> Result<Option<Frame>, FrameError> {
    let mut header = [0u8; 9];
    match reader.read_exact(&mut header).await {
        Ok(()) => {}
        // The box stream's goodbye reads as end of file.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    if header == [0u8; 9] {
        return Ok(None); // muxrpc's own goodbye
    }
    let (flags, len, req) = decode_header(&header)?;
    if len > MAX_BODY {
        return Err(FrameError::Oversize(len));
    }
    let mut body = vec![0u8; len as usize];
    reader.read_exact(&mut body).await?;
    Ok(Some(Frame {
        req,
        stream: flags & STREAM != 0,
        end: flags & END != 0,
        json: flags & TYPE_MASK == TYPE_JSON,
        body,
    }))
}

/// Writes `frame` (without flushing).
pub async fn write_frame(writer: &mut Writer, frame: &Frame) -> Result<(), FrameError> {
    writer.write_all(&encode_header(frame)).await?;
    writer.write_all(&frame.body).await?;
    Ok(())
}

/// Flushes written frames to the network.
pub async fn flush(writer: &mut Writer) -> Result<(), FrameError> {
    writer.flush().await?;
    Ok(())
}

/// Says goodbye at both layers.
pub async fn goodbye(writer: &mut Writer) {
    let _ = writer.write_all(&[0u8; 9]).await;
    let _ = writer.flush().await;
    let _ = writer.goodbye().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip() {
        let frame = Frame::json(-7, true, true, &Value::Bool(true));
        let header = encode_header(&frame);
        assert_eq!(header, [0b1110, 0, 0, 0, 4, 0xff, 0xff, 0xff, 0xf9]);
        assert_eq!(decode_header(&header).expect("decodes"), (0b1110, 4, -7));
        assert!(decode_header(&[0xff, 0, 0, 0, 0, 0, 0, 0, 1]).is_err());
    }
}
