//! The box stream after the handshake (kuska-handshake, as src/net/shs.rs
//! sets it up: fixed keys and nonces, `BOX_CAPACITY` buffers).
//!
//! The first input byte picks the mode:
//! - 0..=85: the rest is the ciphertext stream as it arrives. Nobody but
//!   the peer can make a box that opens, so reading must fail cleanly (an
//!   error, never a panic, never plaintext).
//! - 86..=170: the rest is plaintext chunks (each: a length byte, then that
//!   many bytes, up to 255), written with kuska's own encryptor (the one
//!   our `Writer` is), flushed after each chunk, and a goodbye: reading returns exactly the chunks'
//!   bytes, then the end.
//! - 171..=255: a hostile but authenticated peer's own boxes: each is two
//!   bytes of claimed body length (any u16: kuska's writer never sends more
//!   than 4096, a peer may) and then that many bytes, cycled from the
//!   input. Reading returns exactly those bodies, and never panics; an empty
//!   box ends the stream with an error (kuska reads it as end of file).
#![no_main]

use futures::executor::block_on;
use futures::io::{AsyncReadExt, AsyncWriteExt, Cursor};
use kuska_handshake::async_std::{BoxStreamRead, BoxStreamWrite};
use libfuzzer_sys::fuzz_target;
use scuttlefs_fuzz::{key_nonce, RawBoxSender, SharedVec, BOX_CAPACITY};

fn read_all(ciphertext: Vec<u8>) -> (Vec<u8>, std::io::Result<()>) {
    let mut reader = BoxStreamRead::new(Cursor::new(ciphertext), key_nonce(), BOX_CAPACITY);
    let mut plain = Vec::new();
    let mut buf = [0u8; 1000];
    block_on(async {
        loop {
            match reader.read(&mut buf).await {
                Ok(0) => return (plain, Ok(())),
                Ok(n) => plain.extend_from_slice(&buf[..n]),
                Err(e) => return (plain, Err(e)),
            }
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let _ = kuska_handshake::sodiumoxide::init();
    match mode {
        0..=85 => {
            let (plain, result) = read_all(rest.to_vec());
            assert!(plain.is_empty(), "a forged box opened");
            assert!(result.is_err(), "a forged goodbye opened");
        }
        86..=170 => {
            let mut chunks = Vec::new();
            let mut input = rest;
            while let Some((&len, tail)) = input.split_first() {
                let len = (len as usize).min(tail.len());
                chunks.push(&tail[..len]);
                input = &tail[len..];
            }
            let sink = SharedVec::default();
            let mut writer = BoxStreamWrite::new(sink.clone(), key_nonce(), BOX_CAPACITY);
            block_on(async {
                for chunk in &chunks {
                    writer.write_all(chunk).await.expect("write");
                    writer.flush().await.expect("flush");
                }
                writer.goodbye().await.expect("goodbye");
            });
            let ciphertext = sink.0.borrow().clone();
            let (plain, result) = read_all(ciphertext);
            assert!(result.is_ok(), "{result:?}");
            assert_eq!(plain, chunks.concat());
        }
        171..=255 => {
            let mut sender = RawBoxSender::default();
            let mut bodies = Vec::new();
            let mut input = rest;
            let mut ended_by_empty = false;
            while input.len() >= 2 {
                let len = u16::from_be_bytes([input[0], input[1]]) as usize;
                input = &input[2..];
                let source: &[u8] = if input.is_empty() { &[0x5a] } else { input };
                let body: Vec<u8> = source.iter().copied().cycle().take(len).collect();
                input = &input[len.min(input.len())..];
                sender.send(&body);
                if body.is_empty() {
                    ended_by_empty = true;
                    break;
                }
                bodies.push(body);
            }
            if !ended_by_empty {
                sender.goodbye();
            }
            let (plain, result) = read_all(sender.out);
            assert_eq!(plain, bodies.concat());
            if ended_by_empty {
                let e = result.expect_err("an empty box ends the stream");
                assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);
            } else {
                assert!(result.is_ok(), "{result:?}");
            }
        }
    }
});

