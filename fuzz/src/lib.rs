//! Helpers shared by the fuzz targets.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use kuska_handshake::sodiumoxide::crypto::secretbox;
use kuska_handshake::KeyNonce;

/// The box stream buffer size src/net/shs.rs uses (`BOX_CAPACITY`, private
/// there): a decrypted box header may claim a body of up to 64 KiB.
pub const BOX_CAPACITY: usize = 0x10000 + 64;

/// A fixed key and nonce for one direction of a box stream (kuska's own test
/// values), as a finished handshake would have produced.
pub fn key_nonce() -> KeyNonce {
    KeyNonce::new(key(), nonce())
}

/// The fixed box stream key.
pub fn key() -> secretbox::Key {
    secretbox::Key([
        0x81, 0x98, 0xe2, 0xd3, 0x45, 0x6f, 0x02, 0x2b, 0x20, 0x20, 0xf3, 0x6c, 0xe8, 0x74, 0xad,
        0x8b, 0x33, 0x7a, 0x1c, 0x2d, 0xa1, 0x3f, 0x69, 0xf6, 0x45, 0x8f, 0xd6, 0x34, 0x15, 0xa5,
        0x19, 0x43,
    ])
}

/// The fixed box stream starting nonce.
pub fn nonce() -> secretbox::Nonce {
    secretbox::Nonce([
        0xa2, 0x0f, 0xa8, 0xfe, 0x59, 0xa8, 0x0f, 0x5f, 0x07, 0xc8, 0x02, 0x65, 0xe5, 0xe7, 0x66,
        0x45, 0x82, 0xf0, 0xf5, 0x53, 0xf3, 0x6c, 0xd6, 0xce,
    ])
}

/// The nonce after `n`, big-endian, as the box stream counts.
pub fn increment(n: &mut secretbox::Nonce) {
    for b in n.0.iter_mut().rev() {
        *b = b.wrapping_add(1);
        if *b != 0 {
            break;
        }
    }
}

/// A box stream sender that does whatever a hostile (but authenticated)
/// peer may: any claimed body length, empty bodies, and the goodbye.
pub struct RawBoxSender {
    key: secretbox::Key,
    nonce: secretbox::Nonce,
    /// The ciphertext sent so far.
    pub out: Vec<u8>,
}

impl Default for RawBoxSender {
    fn default() -> Self {
        RawBoxSender {
            key: key(),
            nonce: nonce(),
            out: Vec::new(),
        }
    }
}

impl RawBoxSender {
    /// One box: a header claiming `body.len()` (at most 65535), then the body.
    pub fn send(&mut self, body: &[u8]) {
        assert!(body.len() <= u16::MAX as usize);
        let header_nonce = self.nonce;
        increment(&mut self.nonce);
        let body_nonce = self.nonce;
        increment(&mut self.nonce);
        let mut sealed_body = body.to_vec();
        let body_tag = secretbox::seal_detached(&mut sealed_body, &body_nonce, &self.key);
        let mut header = Vec::with_capacity(18);
        header.extend_from_slice(&(body.len() as u16).to_be_bytes());
        header.extend_from_slice(body_tag.as_ref());
        let header_tag = secretbox::seal_detached(&mut header, &header_nonce, &self.key);
        self.out.extend_from_slice(header_tag.as_ref());
        self.out.extend_from_slice(&header);
        self.out.extend_from_slice(&sealed_body);
    }

    /// The goodbye box: a header of zeros.
    pub fn goodbye(&mut self) {
        let mut header = [0u8; 18];
        let tag = secretbox::seal_detached(&mut header, &self.nonce, &self.key);
        self.out.extend_from_slice(tag.as_ref());
        self.out.extend_from_slice(&header);
    }
}

/// A global allocator that records the largest single allocation made
/// while [`track`] runs on this thread.
pub struct Tracking;

thread_local! {
    static TRACKING: Cell<bool> = const { Cell::new(false) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    if TRACKING.with(Cell::get) {
        LARGEST.with(|l| l.set(l.get().max(size)));
    }
}

unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc_zeroed(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        System.realloc(ptr, layout, new_size)
    }
}

/// Runs `f` and returns its result with the largest single allocation it
/// made on this thread (0 if none; only meaningful with [`Tracking`] as the
/// global allocator).
pub fn track<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LARGEST.with(|l| l.set(0));
    TRACKING.with(|t| t.set(true));
    let out = f();
    TRACKING.with(|t| t.set(false));
    (out, LARGEST.with(Cell::get))
}

/// A future whose polls are tracked by [`track`]: only the code under test
/// runs inside them, not the test's own writer.
pub struct Tracked<F> {
    inner: std::pin::Pin<Box<F>>,
    /// The largest allocation made while polling.
    pub largest: usize,
}

impl<F: std::future::Future> Tracked<F> {
    /// Wraps `f`.
    pub fn new(f: F) -> Self {
        Tracked {
            inner: Box::pin(f),
            largest: 0,
        }
    }
}

impl<F: std::future::Future> std::future::Future for Tracked<F> {
    type Output = (F::Output, usize);
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let this = &mut *self;
        let (poll, largest) = track(|| this.inner.as_mut().poll(cx));
        this.largest = this.largest.max(largest);
        match poll {
            std::task::Poll::Ready(out) => std::task::Poll::Ready((out, this.largest)),
            std::task::Poll::Pending => std::task::Poll::Pending,
        }
    }
}

/// An in-memory byte sink whose contents stay readable after the writer
/// that owns a clone of it is gone.
#[derive(Clone, Default)]
pub struct SharedVec(pub std::rc::Rc<std::cell::RefCell<Vec<u8>>>);

impl futures::io::AsyncWrite for SharedVec {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.0.borrow_mut().extend_from_slice(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn poll_close(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}
