//! The mountpoint before and after mounting: whether a live FUSE filesystem
//! already holds it, and, when mounting fails, what on this machine is
//! missing. The reasoning is in pure functions over gathered facts, so that
//! it is testable without a mount or another user.

use std::path::{Path, PathBuf};

/// The file the kernel's FUSE module answers on.
pub const DEV_FUSE: &str = "/dev/fuse";

/// Where non-root users allow `allow_other`.
pub const FUSE_CONF: &str = "/etc/fuse.conf";

/// What is mounted at a mountpoint, from `/proc/self/mountinfo`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mounted {
    /// The filesystem type, e.g. `fuse.scuttlefs`.
    pub fstype: String,
    /// The mount source, e.g. `scuttlefs`.
    pub source: String,
}

impl Mounted {
    /// Whether this is a FUSE filesystem (`fuse`, `fuse.NAME`, `fuseblk`).
    pub fn is_fuse(&self) -> bool {
        self.fstype == "fuse" || self.fstype == "fuseblk" || self.fstype.starts_with("fuse.")
    }

    /// Whether it is (most likely) another scuttlefs daemon's mount.
    pub fn is_scuttlefs(&self) -> bool {
        self.fstype == "fuse.scuttlefs" || self.source == "scuttlefs"
    }
}

/// What is visible at `mountpoint` (absolute, symlinks resolved) according
/// to `mountinfo` (the text of `/proc/self/mountinfo`): the last mount
/// listed there, which is the topmost.
pub fn mounted_at(mountinfo: &str, mountpoint: &Path) -> Option<Mounted> {
    let wanted = mountpoint.as_os_str().as_encoded_bytes();
    mountinfo.lines().rev().find_map(|line| {
        // id parent major:minor root MOUNTPOINT options [optional…] - TYPE SOURCE super
        let (before, after) = line.split_once(" - ")?;
        let point = before.split(' ').nth(4)?;
        let mut after = after.split(' ');
        let fstype = after.next()?;
        let source = after.next().unwrap_or("");
        (unescape(point) == wanted).then(|| Mounted {
            fstype: String::from_utf8_lossy(&unescape(fstype)).into_owned(),
            source: String::from_utf8_lossy(&unescape(source)).into_owned(),
        })
    })
}

/// Undoes the kernel's octal escapes in mountinfo fields (`\040` for a
/// space, `\011` tab, `\012` newline, `\134` backslash).
fn unescape(field: &str) -> Vec<u8> {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)))
            .map(|d| d.iter().fold(0u32, |n, b| n * 8 + u32::from(b - b'0')));
        match octal.and_then(|n| u8::try_from(n).ok()) {
            Some(byte) => {
                out.push(byte);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    out
}

/// `mountpoint` as mountinfo names it: absolute, with its parent's
/// symlinks resolved. The mountpoint itself is not looked at, because a
/// stale mount fails every access, and a hung one never answers. `None`
/// when its parent does not exist (then nothing is mounted there).
pub fn absolute(mountpoint: &Path) -> Option<PathBuf> {
    match (mountpoint.parent(), mountpoint.file_name()) {
        (Some(parent), Some(name)) => {
            let parent = if parent.as_os_str().is_empty() {
                Path::new(".")
            } else {
                parent
            };
            Some(std::fs::canonicalize(parent).ok()?.join(name))
        }
        // `/`, `.`, `..` and the like: nothing to protect from a stat.
        _ => std::fs::canonicalize(mountpoint).ok(),
    }
}

/// What `/dev/fuse` is like for this process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DevFuse {
    /// It does not exist.
    Missing,
    /// It exists, but this process may not open it for reading and
    /// writing; `mode` is its permission bits when they could be read.
    NoAccess {
        /// Permission bits, e.g. `0o600`.
        mode: Option<u32>,
    },
    /// This process can open it.
    Usable,
}

/// What was found on this machine after a mount failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountFacts {
    /// Whether the daemon runs as root (and so mounts by itself).
    pub root: bool,
    /// The user the daemon runs as, for the message.
    pub uid: u32,
    /// `/dev/fuse`.
    pub dev_fuse: DevFuse,
    /// Whether `fusermount3` (or `fusermount`) was found, through which
    /// non-root users mount.
    pub fusermount: bool,
    /// Whether `--allow-other` was asked for.
    pub allow_other: bool,
    /// Whether `/etc/fuse.conf` holds `user_allow_other`.
    pub user_allow_other: bool,
}

impl MountFacts {
    /// Looks at this machine, for a mount that asked for `allow_other`.
    pub fn gather(allow_other: bool) -> MountFacts {
        // SAFETY: geteuid cannot fail.
        let uid = unsafe { libc::geteuid() };
        MountFacts {
            root: uid == 0,
            uid,
            dev_fuse: dev_fuse_state(Path::new(DEV_FUSE)),
            fusermount: fusermount_found(),
            allow_other,
            user_allow_other: std::fs::read_to_string(FUSE_CONF)
                .is_ok_and(|text| fuse_conf_allows_other(&text)),
        }
    }
}

/// Why mounting failed, as far as `facts` tell, for the user to act on.
/// `error` is what the mount itself reported.
pub fn diagnose(facts: &MountFacts, error: &std::io::Error) -> String {
    match facts.dev_fuse {
        DevFuse::Missing => {
            return format!(
                "{DEV_FUSE} does not exist: load the FUSE module (modprobe fuse), \
                 or in a container pass the device (--device {DEV_FUSE})"
            )
        }
        DevFuse::NoAccess { mode } => {
            let mode = mode
                .map(|m| format!(" (its mode is {m:04o})"))
                .unwrap_or_default();
            return format!(
                "{DEV_FUSE} is not readable and writable by this user (uid {}){mode}: \
                 it is normally mode 0666; fix its permissions (chmod 0666 {DEV_FUSE}, \
                 or a udev rule) or run the daemon as a user who may open it",
                facts.uid
            );
        }
        DevFuse::Usable => {}
    }
    if !facts.root && !facts.fusermount {
        return "fusermount3 is not on PATH: a daemon that does not run as root mounts \
                through it; install the fuse3 package"
            .to_string();
    }
    if !facts.root && facts.allow_other && !facts.user_allow_other {
        return format!(
            "--allow-other needs a line 'user_allow_other' in {FUSE_CONF} when the daemon \
             does not run as root; add it, or drop --allow-other"
        );
    }
    format!("{error} ({DEV_FUSE} and fusermount3 look fine)")
}

/// Whether `/etc/fuse.conf` text enables `user_allow_other`.
pub fn fuse_conf_allows_other(text: &str) -> bool {
    text.lines()
        .map(|line| line.split('#').next().unwrap_or("").trim())
        .any(|line| line == "user_allow_other")
}

fn dev_fuse_state(path: &Path) -> DevFuse {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = std::fs::metadata(path) else {
        return DevFuse::Missing;
    };
    // Opening is the real test (root in a container may be refused by the
    // device cgroup whatever the mode says); the connection it makes ends
    // with the close.
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
    {
        Ok(_) => DevFuse::Usable,
        Err(_) => DevFuse::NoAccess {
            mode: Some(meta.permissions().mode() & 0o7777),
        },
    }
}

/// Whether a fusermount the mount would use exists: `FUSERMOUNT_PATH`, or
/// `fusermount3` or `fusermount` on PATH or in /sbin or /bin (where fuser
/// looks).
fn fusermount_found() -> bool {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if let Some(path) = std::env::var_os("FUSERMOUNT_PATH") {
        return executable(Path::new(&path));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/sbin"), PathBuf::from("/bin")])
        .any(|dir| {
            ["fusermount3", "fusermount"]
                .iter()
                .any(|t| executable(&dir.join(t)))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
40 22 0:35 / /home/me/mount rw,nosuid,nodev,relatime shared:20 - fuse.scuttlefs scuttlefs rw,user_id=1000,group_id=1000
41 22 0:36 / /home/me/with\\040space rw,relatime - fuse.sshfs me@host: rw
42 22 0:37 / /home/me/tmp rw,relatime - tmpfs tmpfs rw
43 42 0:38 / /home/me/tmp rw,relatime - fuse /dev/fuse rw
";

    #[test]
    fn a_scuttlefs_mount_is_found_in_mountinfo() {
        let found = mounted_at(MOUNTINFO, Path::new("/home/me/mount")).expect("mounted");
        assert_eq!(found.fstype, "fuse.scuttlefs");
        assert!(found.is_fuse() && found.is_scuttlefs());
        assert_eq!(mounted_at(MOUNTINFO, Path::new("/home/me/mount/sub")), None);
        assert_eq!(mounted_at(MOUNTINFO, Path::new("/home/me")), None);
    }

    #[test]
    fn escaped_mountpoints_and_stacked_mounts() {
        let sshfs = mounted_at(MOUNTINFO, Path::new("/home/me/with space")).expect("mounted");
        assert!(sshfs.is_fuse() && !sshfs.is_scuttlefs());
        // The topmost of two mounts is the one listed last.
        let top = mounted_at(MOUNTINFO, Path::new("/home/me/tmp")).expect("mounted");
        assert_eq!(top.fstype, "fuse");
        let root = mounted_at(MOUNTINFO, Path::new("/")).expect("mounted");
        assert!(!root.is_fuse());
        assert_eq!(unescape("a\\134b\\011c\\9"), b"a\\b\tc\\9");
    }

    fn a_user() -> MountFacts {
        MountFacts {
            root: false,
            uid: 1000,
            dev_fuse: DevFuse::Usable,
            fusermount: true,
            allow_other: false,
            user_allow_other: false,
        }
    }

    fn eperm() -> std::io::Error {
        std::io::Error::from_raw_os_error(libc::EPERM)
    }

    #[test]
    fn a_missing_dev_fuse_is_named() {
        let facts = MountFacts {
            dev_fuse: DevFuse::Missing,
            fusermount: false,
            ..a_user()
        };
        let message = diagnose(&facts, &eperm());
        assert!(message.starts_with("/dev/fuse does not exist"), "{message}");
        assert!(message.contains("modprobe fuse"), "{message}");
    }

    #[test]
    fn an_unreadable_dev_fuse_is_blamed_not_fuse3() {
        let facts = MountFacts {
            dev_fuse: DevFuse::NoAccess { mode: Some(0o600) },
            uid: 65534,
            ..a_user()
        };
        let message = diagnose(&facts, &eperm());
        assert!(
            message.contains("/dev/fuse is not readable and writable by this user (uid 65534)"),
            "{message}"
        );
        assert!(message.contains("mode is 0600"), "{message}");
        assert!(!message.contains("fuse3"), "{message}");
        // Root is refused too, e.g. by a container's device rules.
        let root = MountFacts {
            root: true,
            uid: 0,
            dev_fuse: DevFuse::NoAccess { mode: None },
            ..a_user()
        };
        assert!(diagnose(&root, &eperm()).contains("(uid 0):"));
    }

    #[test]
    fn a_missing_fusermount_matters_only_to_non_root() {
        let user = MountFacts {
            fusermount: false,
            ..a_user()
        };
        let message = diagnose(&user, &eperm());
        assert!(
            message.starts_with("fusermount3 is not on PATH"),
            "{message}"
        );
        assert!(message.contains("fuse3 package"), "{message}");
        let root = MountFacts {
            root: true,
            uid: 0,
            ..user
        };
        assert!(!diagnose(&root, &eperm()).contains("fusermount3 is not"));
    }

    #[test]
    fn allow_other_without_user_allow_other_is_named() {
        let user = MountFacts {
            allow_other: true,
            ..a_user()
        };
        let message = diagnose(&user, &eperm());
        assert!(message.contains("user_allow_other"), "{message}");
        assert!(message.contains("/etc/fuse.conf"), "{message}");
        let allowed = MountFacts {
            user_allow_other: true,
            ..user.clone()
        };
        assert!(!diagnose(&allowed, &eperm()).contains("user_allow_other"));
        let root = MountFacts {
            root: true,
            uid: 0,
            ..user
        };
        assert!(!diagnose(&root, &eperm()).contains("user_allow_other"));
    }

    #[test]
    fn otherwise_the_mount_error_itself_is_reported() {
        let message = diagnose(&a_user(), &eperm());
        assert!(message.contains("Operation not permitted"), "{message}");
    }

    #[test]
    fn fuse_conf_parsing() {
        assert!(fuse_conf_allows_other(
            "# mount_max = 1000\nuser_allow_other\n"
        ));
        assert!(fuse_conf_allows_other(
            "  user_allow_other # others may read\n"
        ));
        assert!(!fuse_conf_allows_other("#user_allow_other\n"));
        assert!(!fuse_conf_allows_other(""));
    }
}
