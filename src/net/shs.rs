//! Secret handshake and box stream over TCP, through kuska-handshake.
//!
//! kuska's handshake and box stream speak the `futures` I/O traits; tokio's
//! streams are bridged with tokio-util's compat layer.

use std::time::Duration;

use kuska_handshake::async_std::{
    handshake_client, handshake_server, BoxStream, BoxStreamRead, BoxStreamWrite,
};
use kuska_handshake::HandshakeComplete;
use kuska_sodiumoxide::crypto::{auth, sign::ed25519};
use tokio::net::TcpStream;
use tokio_util::compat::{TokioAsyncReadCompatExt, TokioAsyncWriteCompatExt};

use crate::feed::{FeedId, Keypair};

/// How long a handshake may take before the peer is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Box stream buffer size: a box stream body is at most 4 KiB, but a
/// decrypted header may claim up to 64 KiB, which must not overrun it.
const BOX_CAPACITY: usize = 0x10000 + 64;

/// Bytes from a peer: a TCP socket, or a tunnel through a room.
pub type RawRead = Box<dyn futures::AsyncRead + Send + Unpin>;
/// Bytes to a peer.
pub type RawWrite = Box<dyn futures::AsyncWrite + Send + Unpin>;
/// The reading half of an authenticated connection.
pub type Reader = BoxStreamRead<RawRead>;
/// The writing half of an authenticated connection.
pub type Writer = BoxStreamWrite<RawWrite>;

/// An authenticated, encrypted connection.
pub struct Connection {
    /// Who is at the other end (proved by the handshake).
    pub peer: FeedId,
    /// Decrypting reader.
    pub reader: Reader,
    /// Encrypting writer.
    pub writer: Writer,
    /// Whether this side dialled.
    pub dialled: bool,
    /// The peer's address.
    pub address: String,
}

/// Why a connection could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ShsError {
    /// TCP failed.
    #[error("connect: {0}")]
    Io(#[from] std::io::Error),
    /// The handshake failed: another network key, or another peer than the
    /// one expected, or garbage.
    #[error("handshake failed (wrong network key or not an SSB peer): {0}")]
    Handshake(String),
    /// The handshake took too long.
    #[error("handshake timed out")]
    Timeout,
}

struct SodiumKeys {
    net: auth::Key,
    public: ed25519::PublicKey,
    secret: ed25519::SecretKey,
}

fn sodium_keys(keys: &Keypair, network_key: &[u8; 32]) -> Result<SodiumKeys, ShsError> {
    let bad = || ShsError::Handshake("key conversion".into());
    Ok(SodiumKeys {
        net: auth::Key::from_slice(network_key).ok_or_else(bad)?,
        public: ed25519::PublicKey::from_slice(&keys.id().0).ok_or_else(bad)?,
        secret: ed25519::SecretKey::from_slice(&keys.sodium_secret()).ok_or_else(bad)?,
    })
}

/// Dials `host:port` and authenticates as `keys`, expecting `peer`.
pub async fn connect(
    host: &str,
    port: u16,
    peer: FeedId,
    keys: &Keypair,
    network_key: &[u8; 32],
) -> Result<Connection, ShsError> {
    let k = sodium_keys(keys, network_key)?;
    let tcp = tokio::time::timeout(HANDSHAKE_TIMEOUT, TcpStream::connect((host, port)))
        .await
        .map_err(|_| ShsError::Timeout)??;
    prepare(&tcp)?;
    let address = tcp.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    let mut stream = tcp.compat();
    let done = client_handshake(&mut stream, &k, peer).await?;
    let (read, write) = split_tcp(stream.into_inner());
    Ok(Connection::new(read, write, done, peer, true, address))
}

/// Authenticates as the client over any byte stream (a tunnel), expecting
/// `peer` at the far end.
pub async fn connect_over<S>(
    mut stream: S,
    peer: FeedId,
    keys: &Keypair,
    network_key: &[u8; 32],
    address: String,
) -> Result<Connection, ShsError>
where
    S: futures::AsyncRead + futures::AsyncWrite + Send + Unpin + 'static,
{
    let k = sodium_keys(keys, network_key)?;
    let done = client_handshake(&mut stream, &k, peer).await?;
    let (read, write) = split_stream(stream);
    Ok(Connection::new(read, write, done, peer, true, address))
}

/// Authenticates as the server over any byte stream (a tunnel).
pub async fn accept_over<S>(
    mut stream: S,
    keys: &Keypair,
    network_key: &[u8; 32],
    address: String,
) -> Result<Connection, ShsError>
where
    S: futures::AsyncRead + futures::AsyncWrite + Send + Unpin + 'static,
{
    let k = sodium_keys(keys, network_key)?;
    let done = server_handshake(&mut stream, &k).await?;
    let peer = handshake_peer(&done)?;
    let (read, write) = split_stream(stream);
    Ok(Connection::new(read, write, done, peer, false, address))
}

async fn client_handshake<S>(
    stream: &mut S,
    k: &SodiumKeys,
    peer: FeedId,
) -> Result<HandshakeComplete, ShsError>
where
    S: futures::AsyncRead + futures::AsyncWrite + Unpin,
{
    let server = ed25519::PublicKey::from_slice(&peer.0)
        .ok_or_else(|| ShsError::Handshake("peer key".into()))?;
    tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        handshake_client(stream, k.net.clone(), k.public, k.secret.clone(), server),
    )
    .await
    .map_err(|_| ShsError::Timeout)?
    .map_err(|e| ShsError::Handshake(format!("{e:?}")))
}

async fn server_handshake<S>(stream: &mut S, k: &SodiumKeys) -> Result<HandshakeComplete, ShsError>
where
    S: futures::AsyncRead + futures::AsyncWrite + Unpin,
{
    tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        handshake_server(stream, k.net.clone(), k.public, k.secret.clone()),
    )
    .await
    .map_err(|_| ShsError::Timeout)?
    .map_err(|e| ShsError::Handshake(format!("{e:?}")))
}

fn handshake_peer(done: &HandshakeComplete) -> Result<FeedId, ShsError> {
    Ok(FeedId(done.peer_pk.as_ref().try_into().map_err(|_| {
        ShsError::Handshake("peer key length".into())
    })?))
}

/// Authenticates an accepted TCP connection as the server side.
pub async fn accept(
    tcp: TcpStream,
    keys: &Keypair,
    network_key: &[u8; 32],
) -> Result<Connection, ShsError> {
    let k = sodium_keys(keys, network_key)?;
    prepare(&tcp)?;
    let address = tcp.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    let mut stream = tcp.compat();
    let done = server_handshake(&mut stream, &k).await?;
    let peer = handshake_peer(&done)?;
    let (read, write) = split_tcp(stream.into_inner());
    Ok(Connection::new(read, write, done, peer, false, address))
}

/// Idle time before the kernel probes a silent peer, the time between
/// probes, and how many go unanswered before the connection is dropped: a
/// peer that lost power without closing is noticed in about two minutes,
/// even when neither side has anything to send.
const KEEPALIVE_IDLE: std::time::Duration = std::time::Duration::from_secs(60);
const KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);
const KEEPALIVE_PROBES: u32 = 6;

/// Low latency for small frames, and TCP keepalive.
fn prepare(tcp: &TcpStream) -> std::io::Result<()> {
    tcp.set_nodelay(true)?;
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_PROBES);
    socket2::SockRef::from(tcp).set_tcp_keepalive(&keepalive)
}

/// The two halves of any byte stream (a tunnel), sharing it.
fn split_stream<S>(stream: S) -> (RawRead, RawWrite)
where
    S: futures::AsyncRead + futures::AsyncWrite + Send + Unpin + 'static,
{
    let (read, write) = futures::AsyncReadExt::split(stream);
    (Box::new(read), Box::new(write))
}

/// The two halves of a socket, each owned by its own task.
fn split_tcp(tcp: TcpStream) -> (RawRead, RawWrite) {
    let (read, write) = tcp.into_split();
    (Box::new(read.compat()), Box::new(write.compat_write()))
}

impl Connection {
    fn new(
        read: RawRead,
        write: RawWrite,
        done: HandshakeComplete,
        peer: FeedId,
        dialled: bool,
        address: String,
    ) -> Connection {
        let boxed = BoxStream::from_handshake(read, write, done, BOX_CAPACITY);
        let (reader, writer) = boxed.split_read_write();
        Connection {
            peer,
            reader,
            writer,
            dialled,
            address,
        }
    }
}
