//! Tunnels through a room: a muxrpc duplex stream whose binary frames carry
//! a whole inner connection (its own secret handshake and box stream), so
//! that the room relays only ciphertext.
//!
//! Frames of a tunnel are one byte stream, never message boundaries: a
//! room may re-chunk them. An end frame from either side ends the tunnel
//! both ways (ssb-room 1.3 closes the whole stream on a half-close).

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::sync::mpsc;
use tokio_util::sync::PollSender;

use super::muxrpc::Frame;
use crate::feed::FeedId;

/// Chunks of a tunnel queued towards its reader.
pub const TUNNEL_QUEUE: usize = 64;

/// One end of a tunnel, as a byte stream for the inner handshake.
pub struct TunnelStream {
    incoming: mpsc::Receiver<Vec<u8>>,
    buffer: Vec<u8>,
    read_at: usize,
    out: PollSender<Frame>,
    /// The request number our frames on the stream carry.
    wire: i32,
    ended: bool,
}

impl TunnelStream {
    /// A tunnel whose frames go out on `out` as request `wire`; the room
    /// session feeds what arrives into the returned sender.
    pub fn new(out: mpsc::Sender<Frame>, wire: i32) -> (TunnelStream, mpsc::Sender<Vec<u8>>) {
        let (tx, incoming) = mpsc::channel(TUNNEL_QUEUE);
        let stream = TunnelStream {
            incoming,
            buffer: Vec::new(),
            read_at: 0,
            out: PollSender::new(out),
            wire,
            ended: false,
        };
        (stream, tx)
    }
}

impl futures::AsyncRead for TunnelStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        while this.read_at >= this.buffer.len() {
            match this.incoming.poll_recv(cx) {
                Poll::Ready(Some(chunk)) => {
                    this.buffer = chunk;
                    this.read_at = 0;
                }
                // The tunnel ended: end of file.
                Poll::Ready(None) => return Poll::Ready(Ok(0)),
                Poll::Pending => return Poll::Pending,
            }
        }
        let n = buf.len().min(this.buffer.len() - this.read_at);
        buf[..n].copy_from_slice(&this.buffer[this.read_at..this.read_at + n]);
        this.read_at += n;
        Poll::Ready(Ok(n))
    }
}

fn gone() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::BrokenPipe,
        "the room connection is gone",
    )
}

impl futures::AsyncWrite for TunnelStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        if this.ended {
            return Poll::Ready(Err(gone()));
        }
        match this.out.poll_reserve(cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(_)) => return Poll::Ready(Err(gone())),
            Poll::Pending => return Poll::Pending,
        }
        let frame = Frame::binary(this.wire, data.to_vec());
        match this.out.send_item(frame) {
            Ok(()) => Poll::Ready(Ok(data.len())),
            Err(_) => Poll::Ready(Err(gone())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        // The connection's writer flushes every batch it sends.
        Poll::Ready(Ok(()))
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.ended {
            return Poll::Ready(Ok(()));
        }
        match this.out.poll_reserve(cx) {
            Poll::Ready(Ok(())) => {
                let _ = this.out.send_item(Frame::end(this.wire));
            }
            Poll::Ready(Err(_)) => {}
            Poll::Pending => return Poll::Pending,
        }
        this.ended = true;
        Poll::Ready(Ok(()))
    }
}

impl Drop for TunnelStream {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        let Some(out) = self.out.get_ref().cloned() else {
            return;
        };
        let end = Frame::end(self.wire);
        if let Err(mpsc::error::TrySendError::Full(end)) = out.try_send(end) {
            // The far end must hear of it, or its session waits for the
            // idle limit.
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    let _ = out.send(end).await;
                });
            }
        }
    }
}

/// A tunnel's address: `tunnel:@ROOM.ed25519:@TARGET.ed25519~shs:KEY`.
pub struct TunnelAddress {
    /// The room.
    pub room: FeedId,
    /// The peer at the far end.
    pub target: FeedId,
}

impl fmt::Display for TunnelAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let target = self.target.to_string();
        let key = target.trim_start_matches('@').trim_end_matches(".ed25519");
        write!(f, "tunnel:{}:{}~shs:{key}", self.room, self.target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn addresses_print_as_rooms_spell_them() {
        let address = TunnelAddress {
            room: FeedId([1; 32]),
            target: FeedId([2; 32]),
        };
        let text = address.to_string();
        assert!(text.starts_with("tunnel:@AQEB"), "{text}");
        assert!(text.contains(".ed25519:@AgIC"), "{text}");
        assert!(
            text.ends_with("~shs:AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI="),
            "{text}"
        );
    }

    #[tokio::test]
    async fn bytes_cross_rechunked_and_the_end_is_sent_once() {
        let (out, mut frames) = mpsc::channel(16);
        let (mut stream, incoming) = TunnelStream::new(out, -5);
        stream.write_all(b"hello").await.expect("write");
        let frame = frames.recv().await.expect("a frame");
        assert_eq!((frame.req, frame.stream, frame.json), (-5, true, false));
        assert_eq!(frame.body, b"hello");
        incoming.send(b"wor".to_vec()).await.expect("send");
        incoming.send(b"ld".to_vec()).await.expect("send");
        drop(incoming);
        let mut all = Vec::new();
        stream.read_to_end(&mut all).await.expect("read");
        assert_eq!(all, b"world");
        stream.close().await.expect("close");
        drop(stream);
        let end = frames.recv().await.expect("the end");
        assert!(end.end);
        assert!(frames.try_recv().is_err(), "one end only");
    }
}
