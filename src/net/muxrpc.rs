//! muxrpc frames over a box stream.
//!
//! kuska-ssb 0.4 keeps its header codec private, and its reader allocates
//! whatever body length a peer claims (up to 4 GiB), so framing is ours.
//!
//! A header is 9 bytes: flags (stream 0b1000, end/error 0b0100, body type
//! in the low two bits: 0 binary, 1 UTF-8, 2 JSON), the body length
//! (u32, big-endian) and the request number (i32, big-endian).

use std::sync::Arc;
use std::time::Duration;

use futures::{AsyncReadExt, AsyncWriteExt};
use kuska_ssb::api::dto::ErrorOut;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use super::ping::Keepalive;

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
    // Replies negate request numbers; this one has no negation.
    if req == i32::MIN {
        return Err(FrameError::BadHeader);
    }
    Ok((flags, len, req))
}

use super::shs::{Reader, Writer};

/// The largest frame body accepted. SSB messages are under 8 KiB of
/// UTF-16 (at most 24 KiB of UTF-8); anything much larger is hostile, but
/// an EBT clock of thousands of feeds is legitimately larger.
pub const MAX_BODY: u32 = 256 * 1024;

/// The largest frame that may carry a message: anything larger is refused
/// before it is parsed as JSON.
pub const MAX_MESSAGE_FRAME: usize = 32 * 1024;

/// Bytes of a peer's frames read but not yet handled, at most, per
/// connection (a frame being read may add up to [`MAX_BODY`]).
pub const MAX_UNHANDLED_BYTES: usize = 4 << 20;

/// Bytes of bulk frames (messages served) queued for a peer, at most, per
/// connection: a peer that stops reading holds no more than this.
pub const MAX_QUEUED_BYTES: usize = 2 << 20;

/// How long a write to a peer may make no progress before the peer is cut
/// off: it stopped reading (while perhaps still pinging us).
pub const WRITE_STALL: Duration = Duration::from_secs(30);

/// How much of a method name an error echoes back, at most.
const MAX_ECHOED_NAME: usize = 128;

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
        let error = ErrorOut {
            name: "Error".into(),
            message: message.into(),
            stack: String::new(),
        };
        Frame {
            req,
            stream,
            end: true,
            json: true,
            body: serde_json::to_vec(&error).unwrap_or_default(),
        }
    }

    /// A request: `{"name": [...], "type": kind, "args": args}`.
    pub fn request(req: i32, name: &[&str], kind: &str, args: Value) -> Frame {
        let stream = kind != "async" && kind != "sync";
        Frame::json(
            req,
            stream,
            false,
            &json!({"name": name, "type": kind, "args": args}),
        )
    }

    /// Raw bytes on a duplex stream (a tunnel carries a whole connection).
    pub fn binary(req: i32, body: Vec<u8>) -> Frame {
        Frame {
            req,
            stream: true,
            end: false,
            json: false,
            body,
        }
    }

    /// The error text of an end frame that carries one.
    pub fn error_message(&self) -> Option<String> {
        if !self.end {
            return None;
        }
        let body = self.body_json()?;
        body.get("message")?.as_str().map(str::to_string)
    }

    /// The body as JSON, if it is.
    pub fn body_json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// A call a peer made: the method, its type, and its arguments.
pub struct Call {
    /// The method's name parts (`["tunnel", "connect"]`).
    pub name: Vec<String>,
    /// `async`, `sync`, `source`, `sink` or `duplex`.
    pub kind: String,
    /// The arguments (`[]` when absent).
    pub args: Value,
}

impl Call {
    /// The call a request frame carries; a body that is not a call reads as
    /// an `async` call of no method.
    pub fn parse(frame: &Frame) -> Call {
        let request = frame.body_json().unwrap_or(Value::Null);
        Call {
            name: request["name"]
                .as_array()
                .map(|parts| {
                    parts
                        .iter()
                        .take(8)
                        .filter_map(Value::as_str)
                        .map(|part| cut(part, MAX_ECHOED_NAME).to_string())
                        .collect()
                })
                .unwrap_or_default(),
            kind: request["type"].as_str().unwrap_or("async").to_string(),
            args: request.get("args").cloned().unwrap_or(Value::Null),
        }
    }

    /// The name parts, to match on.
    pub fn name(&self) -> Vec<&str> {
        self.name.iter().map(String::as_str).collect()
    }

    /// Whether it opens a stream (its answers are stream frames).
    pub fn is_stream(&self) -> bool {
        self.kind != "async" && self.kind != "sync"
    }

    /// The refusal JS peers give a call they do not serve, with the name
    /// joined by commas as they join it (`method:invite,use is not …`):
    /// their fallbacks recognise it. A long name is cut, so that a peer
    /// cannot make us echo its requests back at length.
    pub fn refusal(&self, req: i32) -> Frame {
        Frame::error(
            -req,
            self.is_stream(),
            &format!(
                "method:{} is not in list of allowed methods",
                self.printable_name(",")
            ),
        )
    }

    /// The name joined with `separator`, cut to a length fit for errors
    /// and logs.
    pub fn printable_name(&self, separator: &str) -> String {
        let joined = self.name.join(separator);
        match cut(&joined, MAX_ECHOED_NAME) {
            short if short.len() == joined.len() => joined,
            short => format!("{short}…"),
        }
    }
}

/// `text` cut to at most `max` bytes, at a character boundary.
fn cut(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Reads the next frame; `None` when the peer said goodbye.
pub async fn read_frame(reader: &mut Reader) -> Result<Option<Frame>, FrameError> {
    match read_header(reader).await? {
        Some(header) => read_body(reader, header).await.map(Some),
        None => Ok(None),
    }
}

/// A frame's header: flags, body length (checked), request number.
type Header = (u8, u32, i32);

/// Reads the next frame's header; `None` when the peer said goodbye.
async fn read_header(reader: &mut Reader) -> Result<Option<Header>, FrameError> {
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
    Ok(Some((flags, len, req)))
}

/// Reads the body that `header` announced.
async fn read_body(reader: &mut Reader, (flags, len, req): Header) -> Result<Frame, FrameError> {
    let mut body = vec![0u8; len as usize];
    reader.read_exact(&mut body).await?;
    Ok(Frame {
        req,
        stream: flags & STREAM != 0,
        end: flags & END != 0,
        json: flags & TYPE_MASK == TYPE_JSON,
        body,
    })
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

/// A connection's frames: a reader task and a writer task around its box
/// stream, so that a slow write never holds up reading.
///
/// What one connection can make the daemon hold is bounded in bytes both
/// ways: frames read and not yet handled ([`MAX_UNHANDLED_BYTES`]), bulk
/// frames queued to be written ([`MAX_QUEUED_BYTES`]). A peer that reads
/// nothing for [`WRITE_STALL`] is cut off.
pub struct Wire {
    /// Bulk frames to send (messages served); the writer batches them and
    /// flushes. Senders wait while [`MAX_QUEUED_BYTES`] are queued.
    pub out: Out,
    /// Tunnel bytes through a room, bulk too, bounded by count (each chunk
    /// is at most a box stream's 4 KiB).
    pub tunnels: mpsc::Sender<Frame>,
    /// The connection's own frames (requests, answers, pings, clocks),
    /// written before bulk ones. The session loop must never wait to send
    /// (it also reads, and a peer doing the same would wait on us), so it
    /// uses [`Control::send`], which fails rather than waits.
    pub control: Control,
    /// Frames received, then the error that ended the connection, if any.
    pub frames: Frames,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
}

impl Wire {
    /// Starts both tasks.
    pub fn start(reader: Reader, writer: Writer) -> Wire {
        let (out, out_rx) = mpsc::channel::<Queued>(4096);
        let (tunnels, tunnels_rx) = mpsc::channel::<Frame>(256);
        let (control, control_rx) = mpsc::channel::<Frame>(CONTROL_QUEUE);
        let (frames_tx, frames_rx) = mpsc::channel(4096);
        let (stalled_tx, stalled_rx) = oneshot::channel();
        let unhandled = Arc::new(Semaphore::new(MAX_UNHANDLED_BYTES));
        Wire {
            out: Out {
                tx: out,
                budget: Arc::new(Semaphore::new(MAX_QUEUED_BYTES)),
            },
            tunnels,
            control: Control(control),
            frames: Frames(frames_rx),
            reader: tokio::spawn(read_loop(reader, frames_tx, unhandled, stalled_rx)),
            writer: tokio::spawn(write_loop(
                writer,
                WriteQueues {
                    control: control_rx,
                    bulk: out_rx,
                    tunnels: tunnels_rx,
                },
                stalled_tx,
            )),
        }
    }

    /// Stops reading, and gives the writer up to 2 s to send what is queued
    /// and say goodbye. Every other sender of frames must be gone by then.
    pub async fn close(self) {
        drop(self.out);
        drop(self.tunnels);
        drop(self.control);
        self.reader.abort();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), self.writer).await;
    }
}

/// A bulk frame waiting to be written, with its share of the budget.
pub struct Queued {
    frame: Frame,
    _budget: OwnedSemaphorePermit,
}

/// The sender of a connection's bulk frames, bounded in bytes.
#[derive(Clone)]
pub struct Out {
    tx: mpsc::Sender<Queued>,
    budget: Arc<Semaphore>,
}

/// The connection is closed.
#[derive(Debug, thiserror::Error)]
#[error("the connection is closed")]
pub struct Closed;

impl Out {
    /// Queues `frame`, waiting while the peer has [`MAX_QUEUED_BYTES`]
    /// waiting for it already.
    pub async fn send(&self, frame: Frame) -> Result<(), Closed> {
        let cost = frame.body.len().clamp(1, MAX_QUEUED_BYTES) as u32;
        let budget = self
            .budget
            .clone()
            .acquire_many_owned(cost)
            .await
            .map_err(|_| Closed)?;
        self.tx
            .send(Queued {
                frame,
                _budget: budget,
            })
            .await
            .map_err(|_| Closed)
    }
}

/// A frame read, with its share of the budget for unhandled frames.
type Received = (Result<Frame, String>, Option<OwnedSemaphorePermit>);

/// The frames a connection received, in order, then the error that ended
/// it, if any.
pub struct Frames(mpsc::Receiver<Received>);

impl Frames {
    /// The next frame; `None` once the connection ended cleanly.
    pub async fn recv(&mut self) -> Option<Result<Frame, String>> {
        // The frame's budget is given back as it is handed over.
        self.0.recv().await.map(|(frame, _budget)| frame)
    }

    /// Whether no frame waits to be handled.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

async fn read_loop(
    mut reader: Reader,
    frames: mpsc::Sender<Received>,
    unhandled: Arc<Semaphore>,
    mut stalled: oneshot::Receiver<String>,
) {
    let mut watching = true;
    loop {
        let item = tokio::select! {
            biased;
            why = &mut stalled, if watching => match why {
                Ok(why) => (Err(why), None),
                // The writer ended without a word: reading goes on.
                Err(_) => {
                    watching = false;
                    continue;
                }
            },
            read = read_budgeted(&mut reader, &unhandled) => match read {
                Read::Frame(frame, budget) => (Ok(frame), Some(budget)),
                Read::Goodbye => return,
                Read::Failed(why) => (Err(why), None),
            },
        };
        let stop = item.0.is_err();
        if frames.send(item).await.is_err() || stop {
            return;
        }
    }
}

/// What reading the next frame gave.
enum Read {
    /// A frame, holding its share of the budget.
    Frame(Frame, OwnedSemaphorePermit),
    /// The peer said goodbye.
    Goodbye,
    /// Why the connection failed.
    Failed(String),
}

/// Reads the next frame once the budget has room for its body.
async fn read_budgeted(reader: &mut Reader, unhandled: &Arc<Semaphore>) -> Read {
    let header = match read_header(reader).await {
        Ok(Some(header)) => header,
        Ok(None) => return Read::Goodbye,
        Err(e) => return Read::Failed(e.to_string()),
    };
    // Waits, reading nothing more, while the session is behind: the peer's
    // writes then back up into its own buffers, not our memory.
    let Ok(budget) = unhandled.clone().acquire_many_owned(header.1.max(1)).await else {
        return Read::Failed("connection closed".into());
    };
    match read_body(reader, header).await {
        Ok(frame) => Read::Frame(frame, budget),
        Err(e) => Read::Failed(e.to_string()),
    }
}

/// Frames of the connection's own that may wait to be written: far more
/// than a well-behaved peer causes. A peer that makes us queue more (it
/// sends requests but does not read the answers) is cut off.
const CONTROL_QUEUE: usize = 8192;

/// The sender of a connection's own frames.
#[derive(Clone)]
pub struct Control(mpsc::Sender<Frame>);

/// The peer does not read what we send.
#[derive(Debug, thiserror::Error)]
#[error("the peer is not reading: {CONTROL_QUEUE} frames wait for it")]
pub struct NotReading;

impl Control {
    /// Queues `frame` without waiting. A closed connection is not an error
    /// (the session is ending anyway); a full queue is.
    pub fn send(&self, frame: Frame) -> Result<(), NotReading> {
        match self.0.try_send(frame) {
            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => Err(NotReading),
        }
    }
}

/// Our own side of a connection: request numbers, the frames we send
/// without waiting, and the keepalive that tells whether the peer is there.
pub struct Link {
    control: Control,
    next_req: i32,
    /// The peer stopped reading.
    stuck: bool,
    /// Pings both ways, and the idle limit.
    pub keepalive: Keepalive,
}

impl Link {
    /// The link of a connection whose own frames go to `control`.
    pub fn new(control: Control) -> Link {
        Link {
            control,
            next_req: 1,
            stuck: false,
            keepalive: Keepalive::new(),
        }
    }

    /// A request number of ours.
    pub fn take_req(&mut self) -> i32 {
        let req = self.next_req;
        self.next_req += 1;
        req
    }

    /// Queues a frame of ours; a peer that lets them pile up is marked.
    pub fn send(&mut self, frame: Frame) {
        if let Err(NotReading) = self.control.send(frame) {
            self.stuck = true;
        }
    }

    /// Queues frames of ours.
    pub fn send_all(&mut self, frames: Vec<Frame>) {
        for frame in frames {
            self.send(frame);
        }
    }

    /// Once a second: pings due.
    pub fn tick(&mut self) {
        let frames = self.keepalive.tick(&mut self.next_req);
        self.send_all(frames);
    }

    /// Why the connection must end now, if it must: the peer stopped
    /// reading, or fell silent (`frames_queued`: frames it sent still wait
    /// to be handled, which is not silence).
    pub fn failure(&self, frames_queued: bool) -> Option<String> {
        if self.stuck {
            return Some(NotReading.to_string());
        }
        let silent = self.keepalive.silent_for().filter(|_| !frames_queued)?;
        Some(format!("peer silent for {} s", silent.as_secs()))
    }
}

/// What a connection's writer takes frames from, most urgent first.
struct WriteQueues {
    control: mpsc::Receiver<Frame>,
    bulk: mpsc::Receiver<Queued>,
    tunnels: mpsc::Receiver<Frame>,
}

impl WriteQueues {
    /// The next frame waiting, without waiting.
    fn try_next(&mut self) -> Option<Frame> {
        self.control
            .try_recv()
            .ok()
            .or_else(|| self.bulk.try_recv().ok().map(|q| q.frame))
            .or_else(|| self.tunnels.try_recv().ok())
    }
}

async fn write_loop(mut writer: Writer, mut queues: WriteQueues, stalled: oneshot::Sender<String>) {
    let mut control_open = true;
    let mut bulk_open = true;
    let mut tunnels_open = true;
    while control_open || bulk_open || tunnels_open {
        let first = tokio::select! {
            biased;
            frame = queues.control.recv(), if control_open => match frame {
                Some(frame) => frame,
                None => { control_open = false; continue; }
            },
            queued = queues.bulk.recv(), if bulk_open => match queued {
                Some(queued) => queued.frame,
                None => { bulk_open = false; continue; }
            },
            frame = queues.tunnels.recv(), if tunnels_open => match frame {
                Some(frame) => frame,
                None => { tunnels_open = false; continue; }
            },
        };
        let mut batch = vec![first];
        let mut bytes = batch[0].body.len();
        while batch.len() < 256 && bytes < 256 * 1024 {
            match queues.try_next() {
                Some(frame) => {
                    bytes += frame.body.len();
                    batch.push(frame);
                }
                None => break,
            }
        }
        // Each frame is at most MAX_BODY: a peer that takes none of it in
        // WRITE_STALL is not reading.
        for frame in &batch {
            match tokio::time::timeout(WRITE_STALL, write_frame(&mut writer, frame)).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return,
                Err(_) => return stop_stalled(stalled),
            }
        }
        match tokio::time::timeout(WRITE_STALL, flush(&mut writer)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return,
            Err(_) => return stop_stalled(stalled),
        }
    }
    goodbye(&mut writer).await;
}

/// Ends a connection whose peer stopped reading: the reader reports why,
/// and the session ends.
fn stop_stalled(stalled: oneshot::Sender<String>) {
    let _ = stalled.send(format!(
        "the peer stopped reading: nothing could be written to it for {} s",
        WRITE_STALL.as_secs()
    ));
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

    #[test]
    fn refusals_echo_at_most_a_short_name() {
        let long = "x".repeat(100_000);
        let frame = Frame::request(3, &[long.as_str(), "é"], "async", json!([]));
        let call = Call::parse(&frame);
        let refusal = call.refusal(3);
        assert!(refusal.body.len() < 400, "{} bytes", refusal.body.len());
        let short = Call::parse(&Frame::request(3, &["invite", "use"], "async", json!([])));
        assert_eq!(
            short.refusal(3).error_message().as_deref(),
            Some("method:invite,use is not in list of allowed methods")
        );
        // Cut at a character boundary.
        assert_eq!(cut("aé", 2), "a");
    }
}
