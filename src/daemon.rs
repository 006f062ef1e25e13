//! `scuttlefs serve`: the node, its control socket, the network, and the
//! mount, until SIGINT or SIGTERM.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use fuser::{MountOption, SessionACL};

use crate::config::{Config, ConfigError};
use crate::control;
use crate::fs::ScuttleFs;
use crate::fuse::Fuse;
use crate::mountpoint::{self, MountFacts};
use crate::net;
use crate::node::{Node, NodeError};
use crate::store::StoreError;

/// Options of `serve` beyond the config file's.
#[derive(Clone, Debug, Default)]
pub struct ServeOptions {
    /// Where to mount; `None` runs without a mount.
    pub mount: Option<PathBuf>,
    /// Let other users read the mount.
    pub allow_other: bool,
    /// Peers to dial besides those found on the LAN (`net:host:port~shs:key`).
    pub peers: Vec<String>,
    /// Skip LAN discovery.
    pub no_discovery: bool,
    /// Rooms to join (`net:host:port~shs:key`).
    pub rooms: Vec<String>,
    /// The rooms' network key when it is not ours (base64, or `main`).
    pub room_caps: Option<String>,
}

/// Why the daemon could not run.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Configuration or identity.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The store.
    #[error(transparent)]
    Node(#[from] NodeError),
    /// Another process (a daemon, or a `scuttlefs run` without one) holds
    /// the store.
    #[error("the store in {path} is in use by {holder}: stop it first, or start the daemon before long jobs so that they publish through it")]
    AlreadyRunning {
        /// `--path`.
        path: String,
        /// Who holds it, from the lock file.
        holder: String,
    },
    /// Mounting, sockets, signals.
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    /// A bad `--peer`.
    #[error(transparent)]
    Peer(#[from] net::address::AddressError),
    /// A live FUSE filesystem is already mounted at the mountpoint: mounting
    /// over it would hide it, and its daemon would carry on unseen.
    #[error(
        "refusing to mount on {mountpoint}: {holder} is already mounted there (a live {fstype} mount); \
         stop it, or choose another --mount"
    )]
    MountpointInUse {
        /// The mountpoint.
        mountpoint: String,
        /// "another scuttlefs daemon", or "another FUSE filesystem".
        holder: String,
        /// Its filesystem type, e.g. `fuse.scuttlefs`.
        fstype: String,
    },
    /// The status page would be open to the network without a token.
    #[error(transparent)]
    Web(#[from] crate::web::WebError),
    /// The mount failed; the diagnosis says what on this machine is wrong.
    #[error("cannot mount {mountpoint}: {diagnosis}")]
    Mount {
        /// The mountpoint.
        mountpoint: String,
        /// What is wrong, from [`mountpoint::diagnose`].
        diagnosis: String,
    },
}

/// Runs the daemon until a signal stops it.
pub fn serve(config: Config, options: ServeOptions) -> Result<(), DaemonError> {
    crate::platform::limit_malloc_arenas();
    let keys = config.load_or_create_keys()?;
    if let Some(addr) = config.http {
        crate::web::check(addr, config.http_token.as_deref())?;
    }
    let peers = options
        .peers
        .iter()
        .map(|p| net::address::PeerAddress::parse(p))
        .collect::<Result<Vec<_>, _>>()?;
    let room_caps = options
        .room_caps
        .as_deref()
        .map(crate::config::parse_room_caps)
        .transpose()?;
    let rooms = options
        .rooms
        .iter()
        .map(|r| net::address::PeerAddress::parse(r).map(|a| (a, room_caps)))
        .collect::<Result<Vec<_>, _>>()?;
    let node = match Node::open(config.clone(), keys, true) {
        Ok(node) => Arc::new(node),
        Err(NodeError::Store(StoreError::Locked(_))) => {
            return Err(DaemonError::AlreadyRunning {
                path: config.path.display().to_string(),
                holder: crate::store::holder(&config.store_dir()),
            })
        }
        Err(e) => return Err(e.into()),
    };
    node.ensure_name(&config.name)?;
    node.flush()?;
    tracing::info!("{} ({}) starting", node.id(), config.name);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| DaemonError::Io("tokio runtime".into(), e))?;

    let session = match &options.mount {
        Some(mountpoint) => Some(mount(node.clone(), mountpoint, options.allow_other)?),
        None => None,
    };

    spawn_merger(node.clone());
    crate::alert::spawn(node.clone());
    let socket = config.socket_path();
    let net_state = net::Net::open(&node);
    let result = runtime.block_on(async {
        let control_node = node.clone();
        let control_net = net_state.clone();
        let control_socket = socket.clone();
        tokio::spawn(async move {
            if let Err(e) = control::serve(control_node, control_net, &control_socket).await {
                tracing::error!("control socket {}: {e}", control_socket.display());
            }
        });
        if let Some(addr) = node.config.http {
            crate::web::start(node.clone(), addr, node.config.http_token.clone()).await;
        }
        // The job table and the views' checkpoint are caches: saved now
        // and then, and at the end.
        let saver = node.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(std::time::Duration::from_secs(60));
            every.tick().await;
            loop {
                every.tick().await;
                let node = saver.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    node.save_jobs();
                    node.save_views();
                })
                .await;
            }
        });
        net::start(
            node.clone(),
            net_state.clone(),
            peers,
            rooms,
            !options.no_discovery,
        )
        .await
        .map_err(|e| DaemonError::Io(format!("listening on port {}", config.port), e))?;
        wait_for_signal().await
    });

    if let (Some(session), Some(mountpoint)) = (session, &options.mount) {
        // A plain unmount fails with EBUSY while any process (a `tail -f`,
        // a shell in the directory) still uses the mount; then detach
        // lazily, or the daemon would leave a stale mount behind.
        if let Err(e) = session.umount_and_join() {
            tracing::debug!("unmount: {e}; detaching lazily");
            if !detach_mount(mountpoint) {
                tracing::warn!("could not unmount {}", mountpoint.display());
            }
        }
    }
    let _ = std::fs::remove_file(&socket);
    // Synced positions spare the next start rewriting any from the log.
    if let Err(e) = node.store.sync_positions() {
        tracing::warn!("could not sync the position files: {e}");
    }
    crate::alert::finish(&node, std::time::Duration::from_secs(10));
    node.flush()?;
    node.save_jobs();
    node.save_views();
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    tracing::info!("stopped");
    result
}

async fn wait_for_signal() -> Result<(), DaemonError> {
    use tokio::signal::unix::{signal, SignalKind};
    let io = |e| DaemonError::Io("signal handler".into(), e);
    let mut term = signal(SignalKind::terminate()).map_err(io)?;
    let mut int = signal(SignalKind::interrupt()).map_err(io)?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: unmounting"),
        _ = int.recv() => tracing::info!("SIGINT: unmounting"),
    }
    Ok(())
}

fn mount(
    node: Arc<Node>,
    mountpoint: &Path,
    allow_other: bool,
) -> Result<fuser::BackgroundSession, DaemonError> {
    refuse_live_mount(mountpoint)?;
    clear_stale_mount(mountpoint);
    if mountpoint.exists() && !mountpoint.is_dir() {
        return Err(DaemonError::Io(
            format!("--mount {}", mountpoint.display()),
            std::io::Error::new(std::io::ErrorKind::NotADirectory, "not a directory"),
        ));
    }
    std::fs::create_dir_all(mountpoint)
        .map_err(|e| DaemonError::Io(format!("creating {}", mountpoint.display()), e))?;
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        MountOption::FSName("scuttlefs".into()),
        MountOption::Subtype("scuttlefs".into()),
        MountOption::NoDev,
        MountOption::NoSuid,
        MountOption::NoAtime,
        // The kernel checks each access against the modes getattr reports
        // (publish 0200, follow 0644, the rest read-only), so with
        // --allow-other other users may read but not publish.
        MountOption::DefaultPermissions,
    ];
    config.acl = if allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    config.n_threads = Some(2);
    let fs = Fuse::new(ScuttleFs::new(node));
    let session = fuser::spawn_mount(fs, mountpoint, &config).map_err(|e| {
        tracing::debug!("mount failed: {e}");
        DaemonError::Mount {
            mountpoint: mountpoint.display().to_string(),
            diagnosis: mountpoint::diagnose(&MountFacts::gather(allow_other), &e),
        }
    })?;
    tracing::info!("mounted at {}", mountpoint.display());
    Ok(session)
}

/// Refuses a mountpoint where a FUSE filesystem is mounted and answers:
/// another daemon (most likely another scuttlefs with another `--path`)
/// is serving it. A stale one (ENOTCONN) is left to [`clear_stale_mount`].
fn refuse_live_mount(mountpoint: &Path) -> Result<(), DaemonError> {
    let Some(absolute) = mountpoint::absolute(mountpoint) else {
        return Ok(());
    };
    let mountinfo = match std::fs::read_to_string("/proc/self/mountinfo") {
        Ok(text) => text,
        Err(e) => {
            tracing::warn!(
                "cannot read /proc/self/mountinfo ({e}): not checking {} for another mount",
                mountpoint.display()
            );
            return Ok(());
        }
    };
    let Some(mounted) = mountpoint::mounted_at(&mountinfo, &absolute).filter(|m| m.is_fuse())
    else {
        return Ok(());
    };
    let stale = matches!(
        std::fs::metadata(&absolute),
        Err(ref e) if e.raw_os_error() == Some(libc::ENOTCONN)
    );
    if stale {
        return Ok(());
    }
    Err(DaemonError::MountpointInUse {
        mountpoint: mountpoint.display().to_string(),
        holder: if mounted.is_scuttlefs() {
            "another scuttlefs daemon".into()
        } else {
            "another FUSE filesystem".into()
        },
        fstype: mounted.fstype,
    })
}

/// A daemon killed without unmounting leaves a mount whose every access
/// fails with ENOTCONN ("Transport endpoint is not connected"). Detach it.
pub fn clear_stale_mount(mountpoint: &Path) {
    let stale = matches!(
        std::fs::metadata(mountpoint),
        Err(ref e) if e.raw_os_error() == Some(libc::ENOTCONN)
    );
    if !stale {
        return;
    }
    tracing::warn!("clearing stale mount at {}", mountpoint.display());
    if !detach_mount(mountpoint) {
        tracing::error!(
            "could not clear the stale mount at {}: run 'fusermount3 -uz {}'",
            mountpoint.display(),
            mountpoint.display()
        );
    }
}

/// Lazily unmounts `mountpoint`: directly as root, else through fusermount.
fn detach_mount(mountpoint: &Path) -> bool {
    if crate::platform::detach_mount(mountpoint).is_ok() {
        return true;
    }
    ["fusermount3", "fusermount"].iter().any(|tool| {
        std::process::Command::new(tool)
            .args(["-u", "-z"])
            .arg(mountpoint)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// The background thread: merges lines that arrived out of order into
/// `merged.log`'s file, so that opening it reads the file directly again;
/// compresses the message log's older records; syncs the position files;
/// gives freed memory back.
fn spawn_merger(node: Arc<Node>) {
    let spawned = std::thread::Builder::new()
        .name("merge".into())
        .spawn(move || {
            let mut positions = PositionSyncs::default();
            let mut freed = FreedMemory::default();
            loop {
                let Some(views) = node.views() else { return };
                if views.merge_due() {
                    let started = std::time::Instant::now();
                    match views.merge() {
                        Ok(true) => {
                            tracing::debug!(
                                "merged out-of-order lines into merged.log in {:?}",
                                started.elapsed()
                            );
                            // The last checkpoint names the generation before
                            // the merge, which stays on disk until one names
                            // the new one.
                            node.save_views();
                            freed.note_work();
                        }
                        Ok(false) => {}
                        Err(e) => {
                            tracing::warn!("could not merge merged.log's late lines: {e}");
                            std::thread::sleep(std::time::Duration::from_secs(10));
                        }
                    }
                }
                match node.store.seal_cold(crate::store::HOT_LOG_BYTES) {
                    Ok(0) => {}
                    Ok(_) => freed.note_work(),
                    Err(e) => {
                        tracing::warn!("could not compress the message log's older records: {e}");
                        std::thread::sleep(std::time::Duration::from_secs(60));
                    }
                }
                positions.sync_if_due(&node);
                std::thread::sleep(std::time::Duration::from_millis(100));
                freed.return_to_system(&node);
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("no background merging of merged.log: {e}");
    }
}

/// Syncs the store's position files once a second: each sync spares the
/// next start rewriting those positions from the log.
struct PositionSyncs {
    synced_at: std::time::Instant,
    /// A sync failed: every later one would too (see
    /// `Store::sync_positions`), and the next start writes the positions
    /// again from the log.
    failed: bool,
}

impl Default for PositionSyncs {
    fn default() -> PositionSyncs {
        PositionSyncs {
            synced_at: std::time::Instant::now(),
            failed: false,
        }
    }
}

impl PositionSyncs {
    fn sync_if_due(&mut self, node: &Node) {
        if self.failed || self.synced_at.elapsed() < std::time::Duration::from_secs(1) {
            return;
        }
        if let Err(e) = node.store.sync_positions() {
            tracing::error!("could not sync the position files: {e}");
            self.failed = true;
        }
        self.synced_at = std::time::Instant::now();
    }
}

/// Gives memory the daemon freed back to the system, at most once a
/// second while messages arrive or the background thread works (merges,
/// compression), and once more when they stop. glibc's allocator keeps
/// freed pages in its heaps otherwise, between live allocations where it
/// cannot trim them by itself: the views' merges and the store's batches
/// make large short-lived buffers, and after a burst of replication the
/// daemon's resident size stayed at its highest for good (1.5 GB after
/// ten million messages, 236 MB once trimmed). Half of what stayed
/// resident after a merge at ten million was such free memory.
#[derive(Default)]
struct FreedMemory {
    trimmed_at_ms: f64,
    /// Background work since the last trim.
    worked: bool,
}

impl FreedMemory {
    fn note_work(&mut self) {
        self.worked = true;
    }

    fn return_to_system(&mut self, node: &Node) {
        let now = crate::clock::now_ms();
        let changed = node.last_change_ms() > self.trimmed_at_ms;
        if (changed || self.worked) && now - self.trimmed_at_ms >= 1000.0 {
            self.trimmed_at_ms = now;
            self.worked = false;
            crate::platform::return_free_memory();
        }
    }
}
