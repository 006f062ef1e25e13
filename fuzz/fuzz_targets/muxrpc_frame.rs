//! muxrpc frames (src/net/muxrpc.rs `read_frame`) from an authenticated but
//! hostile peer: the input is the plaintext the peer sends through the box
//! stream, read back through the real `Reader` type (a box stream over a
//! tokio socket) with the fixed keys of a finished handshake.
//!
//! The first input byte picks how the plaintext is cut into boxes (a frame
//! header may straddle two), and whether the stream ends with a goodbye.
//!
//! Invariants: the frames read are exactly those a reference decoder of the
//! documented format finds, errors included; no single allocation while
//! reading exceeds the frame limit `MAX_BODY` (a length field is checked
//! before anything is allocated for it).
#![no_main]

use std::os::unix::io::{FromRawFd, IntoRawFd};
use std::sync::OnceLock;

use kuska_handshake::async_std::BoxStreamRead;
use libfuzzer_sys::fuzz_target;
use scuttlefs::net::muxrpc::{read_frame, Frame, FrameError, MAX_BODY};
use scuttlefs::net::shs::Reader;
use scuttlefs_fuzz::{key_nonce, RawBoxSender, Tracked, Tracking, BOX_CAPACITY};
use tokio::io::AsyncWriteExt as _;
use tokio_util::compat::TokioAsyncReadCompatExt;

#[global_allocator]
static ALLOC: Tracking = Tracking;

/// What `read_frame` should return, from the format's description.
#[derive(Debug, PartialEq)]
enum Expect {
    Frame(Frame),
    End,
    BadHeader,
    Oversize(u32),
    ShortBody,
}

fn reference(mut plain: &[u8]) -> Vec<Expect> {
    let mut out = Vec::new();
    loop {
        if plain.len() < 9 {
            out.push(Expect::End);
            return out;
        }
        let (header, rest) = plain.split_at(9);
        if header == [0u8; 9] {
            out.push(Expect::End);
            return out;
        }
        let flags = header[0];
        if flags & 0xf0 != 0 || flags & 0b11 == 3 {
            out.push(Expect::BadHeader);
            return out;
        }
        let len = u32::from_be_bytes(header[1..5].try_into().unwrap());
        let req = i32::from_be_bytes(header[5..9].try_into().unwrap());
        // Replies negate request numbers: one with no negation is refused.
        if req == i32::MIN {
            out.push(Expect::BadHeader);
            return out;
        }
        if len > MAX_BODY {
            out.push(Expect::Oversize(len));
            return out;
        }
        if rest.len() < len as usize {
            out.push(Expect::ShortBody);
            return out;
        }
        let (body, rest) = rest.split_at(len as usize);
        out.push(Expect::Frame(Frame {
            req,
            stream: flags & 0b1000 != 0,
            end: flags & 0b0100 != 0,
            json: flags & 0b11 == 2,
            body: body.to_vec(),
        }));
        plain = rest;
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        let _ = kuska_handshake::sodiumoxide::init();
        tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .expect("runtime")
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, plain)) = data.split_first() else {
        return;
    };
    let box_size = (mode & 0x7f) as usize * 37 + 1;
    let goodbye = mode & 0x80 != 0;
    let mut sender = RawBoxSender::default();
    for piece in plain.chunks(box_size.min(4096)) {
        sender.send(piece);
    }
    if goodbye {
        sender.goodbye();
    }
    let ciphertext = sender.out;
    let want = reference(plain);

    let got = runtime().block_on(async {
        // `Reader` is a box stream over a tokio TCP read half; a socket pair
        // stands in for the connection.
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().expect("socketpair");
        ours.set_nonblocking(true).expect("nonblocking");
        theirs.set_nonblocking(true).expect("nonblocking");
        // SAFETY: a connected stream socket; only read, written and shut down.
        let ours = unsafe { std::net::TcpStream::from_raw_fd(ours.into_raw_fd()) };
        let ours = tokio::net::TcpStream::from_std(ours).expect("register");
        let (read, _write) = ours.into_split();
        let mut reader: Reader =
            BoxStreamRead::new(Box::new(read.compat()), key_nonce(), BOX_CAPACITY);
        let mut theirs = tokio::net::UnixStream::from_std(theirs).expect("register");

        // The peer never finishes on its own: the reader may stop early (on
        // an error) with the socket full, and then the peer is dropped.
        let send = async move {
            let _ = theirs.write_all(&ciphertext).await;
            let _ = theirs.shutdown().await;
            std::future::pending::<()>().await;
        };
        let receive = async {
            let mut got = Vec::new();
            loop {
                let (result, largest) = Tracked::new(read_frame(&mut reader)).await;
                assert!(
                    largest <= MAX_BODY as usize,
                    "read_frame allocated {largest} bytes at once"
                );
                let (expect, stop) = match result {
                    Ok(Some(frame)) => {
                        assert!(frame.body.len() <= MAX_BODY as usize);
                        (Expect::Frame(frame), false)
                    }
                    Ok(None) => (Expect::End, true),
                    Err(FrameError::BadHeader) => (Expect::BadHeader, true),
                    Err(FrameError::Oversize(n)) => (Expect::Oversize(n), true),
                    Err(FrameError::Io(e)) => {
                        assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof, "{e}");
                        (Expect::ShortBody, true)
                    }
                };
                got.push(expect);
                if stop {
                    return got;
                }
            }
        };
        tokio::select! {
            got = receive => got,
            _ = send => unreachable!(),
        }
    });
    assert_eq!(got, want);
});
