//! Where a node keeps its files, and the settings in `<path>/config`.

use std::fs;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::feed::{FeedError, Keypair};

/// The TCP and UDP port ssb-server and go-ssb use by default.
pub const DEFAULT_PORT: u16 = 8008;
/// How far along the follow graph feeds are replicated, as ssb-server does.
pub const DEFAULT_HOPS: u32 = 3;
/// An alert is repeated this often while its trouble lasts, by default.
pub const DEFAULT_REMIND_MS: f64 = 86_400_000.0;
/// Where the status page listens unless told otherwise: this machine only.
pub const DEFAULT_HTTP: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::LOCALHOST,
    8807,
));

/// Why the configuration or identity cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The network key is not base64 of 32 bytes.
    #[error("bad network key {0:?}: --caps.shs takes the base64 of exactly 32 bytes (make one with: head -c 32 /dev/urandom | base64)")]
    BadNetworkKey(String),
    /// The config file is not valid JSON of the expected shape.
    #[error("{path}: {message}")]
    BadConfig {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// The secret file is unusable.
    #[error("{path}: {source}")]
    Secret {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        source: FeedError,
    },
}

/// The settings saved in `<path>/config`, in the spelling ssb-server uses
/// where it has one.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ConfigFile {
    /// TCP port to listen on, and UDP port for LAN discovery.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// The network key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub caps: Option<Caps>,
    /// Replication distance along the follow graph.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hops: Option<u32>,
    /// This machine's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The name or address other machines reach this one at, for invites
    /// (ssb-server's `host`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// ssb-server's spelling of hops, read for compatibility.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub friends: Option<Friends>,
    /// Where alerts go (`scuttlefs alert add`): target URLs, which may
    /// hold credentials (the file is 0600).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alerts: Vec<String>,
    /// How long a machine may be silent before it counts as quiet (`26h`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_silence: Option<String>,
    /// How often an alert is repeated while its trouble lasts (`1d`, or
    /// `off`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remind: Option<String>,
    /// Where the status page listens (`127.0.0.1:8807`, or `off`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
    /// The token every request to the status page must carry (required
    /// when it listens beyond loopback).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_token: Option<String>,
    /// Where `serve` mounts when not told (`join --mount`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount: Option<String>,
}

/// `caps` in ssb-server's config.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Caps {
    /// The secret-handshake network key, base64.
    pub shs: String,
}

/// `friends` in ssb-server's config.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Friends {
    /// Replication distance.
    pub hops: Option<u32>,
}

/// Options given on the command line, which override the config file.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// `--path`.
    pub path: Option<PathBuf>,
    /// `--port`.
    pub port: Option<u16>,
    /// `--caps.shs`.
    pub network_key: Option<String>,
    /// `--hops`.
    pub hops: Option<u32>,
    /// `--name`.
    pub name: Option<String>,
    /// `--host`.
    pub host: Option<String>,
    /// `serve --max-silence`.
    pub max_silence: Option<String>,
    /// `serve --remind`.
    pub remind: Option<String>,
    /// `serve --http`.
    pub http: Option<String>,
    /// `serve --http-token`.
    pub http_token: Option<String>,
    /// `join --mount`.
    pub mount: Option<String>,
}

/// Everything a node needs to know about itself.
#[derive(Clone, Debug)]
pub struct Config {
    /// The data directory.
    pub path: PathBuf,
    /// TCP and UDP port.
    pub port: u16,
    /// The secret-handshake network key.
    pub network_key: [u8; 32],
    /// Replication distance.
    pub hops: u32,
    /// This machine's name.
    pub name: String,
    /// Where other machines reach this one, for invites.
    pub host: Option<String>,
    /// How long a machine may be silent before it counts as quiet, for
    /// `mount/health`, `scuttlefs health` and alerts (`serve --max-silence`).
    pub max_silence_ms: f64,
    /// How often an alert is repeated while its trouble lasts; `None`
    /// for never (`serve --remind`, default a day).
    pub remind_ms: Option<f64>,
    /// Where the status page listens; `None` when it is off
    /// (`serve --http`).
    pub http: Option<SocketAddr>,
    /// The status page's token (`serve --http-token`).
    pub http_token: Option<String>,
    /// Where `serve` mounts when not told (`join --mount`).
    pub mount: Option<PathBuf>,
}

impl Config {
    /// The default data directory, `~/.scuttlefs`.
    pub fn default_path() -> PathBuf {
        std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("."))
            .join(".scuttlefs")
    }

    /// Loads `<path>/config`, applies `overrides`, and fills in defaults. A
    /// new network key is generated when none is set. With `save`, the
    /// result is written back, so the daemon's choices persist.
    pub fn load(overrides: &Overrides, save: bool) -> Result<Config, ConfigError> {
        let path = overrides.path.clone().unwrap_or_else(Config::default_path);
        let file_path = path.join("config");
        let mut file = read_config_file(&file_path)?;
        if let Some(key) = &overrides.network_key {
            let new = parse_network_key(key)?;
            let saved = file
                .caps
                .as_ref()
                .and_then(|c| parse_network_key(&c.shs).ok());
            if save && saved.is_some_and(|old| old != new) {
                // Never the key itself: logs travel further than the config.
                tracing::warn!(
                    "--caps.shs replaces the network key saved in {}: this machine now \
                     reaches only machines that use the new key",
                    file_path.display()
                );
            }
            file.caps = Some(Caps { shs: key.clone() });
        }
        let network_key = match &file.caps {
            Some(caps) => parse_network_key(&caps.shs)?,
            None => {
                let key: [u8; 32] = rand::random();
                file.caps = Some(Caps {
                    shs: STANDARD.encode(key),
                });
                if save {
                    tracing::info!(
                        "made a new network key, saved in {} (caps.shs); give the other \
                         machines the same key with --caps.shs",
                        file_path.display()
                    );
                }
                key
            }
        };
        if overrides.port.is_some() {
            file.port = overrides.port;
        }
        if overrides.hops.is_some() {
            file.hops = overrides.hops;
        }
        if overrides.name.is_some() {
            file.name.clone_from(&overrides.name);
        }
        if overrides.host.is_some() {
            file.host.clone_from(&overrides.host);
        }
        if overrides.max_silence.is_some() {
            file.max_silence.clone_from(&overrides.max_silence);
        }
        let max_silence_ms = match &file.max_silence {
            Some(text) => {
                let silence =
                    crate::vocab::parse_duration(text).map_err(|e| ConfigError::BadConfig {
                        path: file_path.clone(),
                        message: format!("max_silence: {e}"),
                    })?;
                if silence.is_zero() {
                    return Err(ConfigError::BadConfig {
                        path: file_path.clone(),
                        message: "max_silence: 0 would call every machine quiet at once".into(),
                    });
                }
                silence.as_secs_f64() * 1000.0
            }
            None => crate::health::DEFAULT_MAX_SILENCE_MS,
        };
        if overrides.remind.is_some() {
            file.remind.clone_from(&overrides.remind);
        }
        let remind_ms = match file.remind.as_deref().map(str::trim) {
            Some("off") => None,
            Some(text) => Some(
                crate::vocab::parse_duration(text)
                    .ok()
                    .filter(|d| !d.is_zero())
                    .ok_or_else(|| ConfigError::BadConfig {
                        path: file_path.clone(),
                        message: format!("remind: {text:?} is not a duration (such as 1d) or off"),
                    })?
                    .as_secs_f64()
                    * 1000.0,
            ),
            None => Some(DEFAULT_REMIND_MS),
        };
        if overrides.http.is_some() {
            file.http.clone_from(&overrides.http);
        }
        let http = match file.http.as_deref() {
            Some(text) => parse_http_address(text).map_err(|message| ConfigError::BadConfig {
                path: file_path.clone(),
                message: format!("http: {message}"),
            })?,
            None => Some(DEFAULT_HTTP),
        };
        if overrides.http_token.is_some() {
            file.http_token.clone_from(&overrides.http_token);
        }
        if let Some(token) = file.http_token.as_deref() {
            check_http_token(token).map_err(|message| ConfigError::BadConfig {
                path: file_path.clone(),
                message: format!("http_token: {message}"),
            })?;
        }
        if overrides.mount.is_some() {
            file.mount.clone_from(&overrides.mount);
        }
        let config = Config {
            mount: file.mount.as_ref().map(PathBuf::from),
            http,
            http_token: file.http_token.clone(),
            port: file.port.unwrap_or(DEFAULT_PORT),
            network_key,
            hops: file
                .hops
                .or_else(|| file.friends.as_ref().and_then(|f| f.hops))
                .unwrap_or(DEFAULT_HOPS),
            name: file.name.clone().unwrap_or_else(hostname),
            host: file.host.clone(),
            max_silence_ms,
            remind_ms,
            path,
        };
        if save {
            ensure_dir(&config.path)?;
            let text = serde_json::to_string_pretty(&file).unwrap_or_default();
            write_private(&file_path, text.as_bytes())?;
        }
        Ok(config)
    }

    /// Loads `<path>/secret`, creating it (mode 0600) when absent.
    pub fn load_or_create_keys(&self) -> Result<Keypair, ConfigError> {
        let secret = self.path.join("secret");
        match fs::read_to_string(&secret) {
            Ok(text) => {
                Keypair::from_secret_file_text(&text).map_err(|source| ConfigError::Secret {
                    path: secret,
                    source,
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                ensure_dir(&self.path)?;
                let keys = Keypair::generate();
                write_private(&secret, keys.to_secret_file_text().as_bytes())?;
                Ok(keys)
            }
            Err(source) => Err(ConfigError::Io {
                path: secret,
                source,
            }),
        }
    }

    /// The sled store's directory.
    pub fn store_dir(&self) -> PathBuf {
        self.path.join("db")
    }

    /// The line file behind the log views (a cache).
    pub fn line_file(&self) -> PathBuf {
        self.path.join("lines.cache")
    }

    /// The job table behind `health` (a cache).
    pub fn jobs_cache(&self) -> PathBuf {
        self.path.join("jobs.cache")
    }

    /// The daemon's control socket.
    pub fn socket_path(&self) -> PathBuf {
        self.path.join("scuttlefs.sock")
    }
}

/// The alert target URLs saved in `<dir>/config`.
pub fn alert_targets(dir: &Path) -> Result<Vec<String>, ConfigError> {
    Ok(read_config_file(&dir.join("config"))?.alerts)
}

/// Saves `targets` as the alert target URLs in `<dir>/config`, keeping
/// the rest of it; a running daemon takes them at its next second.
pub fn set_alert_targets(dir: &Path, targets: Vec<String>) -> Result<(), ConfigError> {
    let file_path = dir.join("config");
    let mut file = read_config_file(&file_path)?;
    file.alerts = targets;
    ensure_dir(dir)?;
    let text = serde_json::to_string_pretty(&file).unwrap_or_default();
    write_private(&file_path, text.as_bytes())
}

/// `<path>/config` as saved; the defaults when there is none.
fn read_config_file(file_path: &Path) -> Result<ConfigFile, ConfigError> {
    match fs::read_to_string(file_path) {
        Ok(text) => serde_json::from_str(&text).map_err(|e| ConfigError::BadConfig {
            path: file_path.to_path_buf(),
            message: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ConfigFile::default()),
        Err(source) => Err(ConfigError::Io {
            path: file_path.to_path_buf(),
            source,
        }),
    }
}

/// `serve --http`: `HOST:PORT`, a bare port (on loopback), or `off`.
pub fn parse_http_address(text: &str) -> Result<Option<SocketAddr>, String> {
    let text = text.trim();
    if text == "off" {
        return Ok(None);
    }
    if let Ok(port) = text.parse::<u16>() {
        return Ok(Some(SocketAddr::from(([127, 0, 0, 1], port))));
    }
    text.parse::<SocketAddr>().map(Some).map_err(|_| {
        format!("{text:?} is not an address to listen on: give HOST:PORT (127.0.0.1:8807), a port, or off")
    })
}

/// The shortest `--http-token` taken: a token is the page's only lock
/// once it listens beyond loopback.
pub const MIN_HTTP_TOKEN_LEN: usize = 16;

/// Refuses a token too short to guess at, or one that could not travel
/// in a header or a cookie.
pub fn check_http_token(token: &str) -> Result<(), String> {
    if token.len() < MIN_HTTP_TOKEN_LEN {
        return Err(format!(
            "a token needs at least {MIN_HTTP_TOKEN_LEN} characters (openssl rand -hex 16 makes one)"
        ));
    }
    if !token
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-._~+/=".contains(&b))
    {
        return Err("a token may hold only letters, digits and - . _ ~ + / =".into());
    }
    Ok(())
}

/// Decodes a `--caps.shs` value.
pub fn parse_network_key(text: &str) -> Result<[u8; 32], ConfigError> {
    STANDARD
        .decode(text.trim())
        .ok()
        .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
        .ok_or_else(|| ConfigError::BadNetworkKey(text.to_string()))
}

/// Decodes a `--room-caps` value: a network key, or `main` for the main
/// SSB network's (public rooms run on it).
pub fn parse_room_caps(text: &str) -> Result<[u8; 32], ConfigError> {
    if text.trim() == "main" {
        let key = kuska_ssb::discovery::ssb_net_id();
        return <[u8; 32]>::try_from(&key[..])
            .map_err(|_| ConfigError::BadNetworkKey(text.to_string()));
    }
    parse_network_key(text)
}

/// This machine's host name (`localhost` when the system will not say).
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its whole length, and gethostname
    // writes at most that many bytes.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "localhost".into();
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// Creates the data directory, private to this user, when it is missing.
/// An existing directory keeps its mode: `--path` may name a directory the
/// user shares on purpose, or a typo may name `/etc`, and changing its mode
/// would hurt more than it helps. Others being able to read it is worth a
/// warning, since it holds the secret key's directory listing and the logs.
pub(crate) fn ensure_dir(path: &Path) -> Result<(), ConfigError> {
    let io = |source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    };
    match fs::metadata(path) {
        Ok(meta) if meta.is_dir() => {
            let mode = meta.permissions().mode();
            if mode & 0o077 != 0 {
                tracing::warn!(
                    "{} is open to other users (mode {:o}); its files are private, but \
                     `chmod 700 {}` keeps even their names to you",
                    path.display(),
                    mode & 0o7777,
                    path.display()
                );
            }
            Ok(())
        }
        Ok(_) => Err(io(std::io::Error::new(
            std::io::ErrorKind::NotADirectory,
            "not a directory",
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
            .map_err(io),
        Err(e) => Err(io(e)),
    }
}

pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> Result<(), ConfigError> {
    replace_file(path, bytes).map_err(|source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Replaces the file at `path` with `bytes`, readable by this user only,
/// durably: a power cut leaves the old file or the new one, whole.
pub(crate) fn replace_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    replace_file_with(path, |file| file.write_all(bytes))
}

/// Replaces the file at `path` with what `write` writes to it, as
/// [`replace_file`] does; for contents too large to assemble in memory
/// first.
pub(crate) fn replace_file_with(
    path: &Path,
    write: impl FnOnce(&mut fs::File) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    // A temporary file left by a crash is ours to remove. Created new
    // (O_EXCL) and never through a link, so that nothing planted at that
    // name can redirect the write or keep a mode others can read.
    match fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp)?;
    if let Err(e) = write(&mut file).and_then(|()| file.sync_all()) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    file.sync_all()?;
    fs::rename(&tmp, path)?;
    match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => fs::File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}
