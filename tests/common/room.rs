//! ssb-room 1.3.0 from the npm registry (tests/js-room), the room server
//! the room tests use, run in a network namespace.

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

use scuttlefs::feed::Keypair;

use super::ssb_server::node_command;
use super::{repo, system_available, wait_until};

/// Node.js and tests/js-room/node_modules (npm ci in tests/js-room).
pub fn available() -> bool {
    let ok = repo()
        .join("tests/js-room/node_modules/ssb-room/bin.js")
        .exists();
    system_available("ssb-room in tests/js-room/node_modules (npm ci there)", ok)
}

/// A running room.
pub struct RoomServer {
    child: Child,
    /// The room's id.
    pub id: String,
    /// Its address, `net:HOST:PORT~shs:KEY`.
    pub address: String,
}

impl RoomServer {
    /// Starts a room listening on `host:port` inside `netns`, under the
    /// network key `caps` (None: the main SSB network's, ssb-room's
    /// default). Returns once its port answers from `probe_ns`.
    pub fn start(
        dir: &Path,
        netns: &str,
        host: &str,
        port: u16,
        caps: Option<&str>,
        probe_ns: &str,
    ) -> RoomServer {
        let home = dir.join("room-home");
        let ssb = home.join(".ssb");
        std::fs::create_dir_all(&ssb).expect("room dir");
        // A secret written first is the one the room uses: its id is known.
        let keys = Keypair::generate();
        std::fs::write(ssb.join("secret"), keys.to_secret_file_text()).expect("room secret");
        let mut config = serde_json::json!({
            "host": host,
            "port": port,
            "connections": {
                "incoming": {"net": [{"scope": "public", "transform": "shs", "host": host, "port": port}]},
                "outgoing": {"net": [{"transform": "shs"}]},
            },
        });
        if let Some(caps) = caps {
            config["caps"] = serde_json::json!({ "shs": caps });
        }
        std::fs::write(ssb.join("config"), config.to_string()).expect("room config");
        std::fs::write(
            ssb.join("roomcfg"),
            r#"{"name":"test room","description":"scuttlefs tests"}"#,
        )
        .expect("roomcfg");
        let log = std::fs::File::create(dir.join("room.log")).expect("room log");
        let js = repo().join("tests/js-room");
        let child = node_command(Some(netns))
            .arg(js.join("node_modules/ssb-room/bin.js"))
            .arg("start")
            .current_dir(&js)
            .env("HOME", &home)
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("ssb-room starts");
        let id = keys.id().to_string();
        let key = &id[1..id.len() - 8];
        let room = RoomServer {
            child,
            address: format!("net:{host}:{port}~shs:{key}"),
            id,
        };
        assert!(
            wait_until(Duration::from_secs(30), || super::sites::port_open(
                probe_ns, host, port
            )),
            "the room did not come up:\n{}",
            std::fs::read_to_string(dir.join("room.log")).unwrap_or_default()
        );
        room
    }

    /// ssb-room's invite: the address and its fixed seed.
    pub fn invite(&self) -> String {
        format!(
            "{}:SSB+Room+PSK3TLYC2T86EHQCUHBUHASCASE18JBV24=",
            self.address
        )
    }

    /// The room process's id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for RoomServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A room in the middle of `sites` (under network key `caps`), and a
/// daemon called `a` at site A (port 8008) that joined it: the inviter of
/// the join tests and benchmark.
pub fn inviter_in_a_room(
    dir: &Path,
    sites: &super::sites::Sites,
    caps: &str,
) -> (RoomServer, super::Daemon) {
    let room = RoomServer::start(
        dir,
        &sites.middle,
        super::sites::MIDDLE,
        8008,
        Some(caps),
        &sites.a,
    );
    let a = super::Daemon::start_in(
        Some(&sites.a),
        &dir.join("a"),
        "a",
        &["--caps.shs", caps, "--port", "8008"],
    );
    let path = a.path.to_str().expect("utf8").to_string();
    super::run_ok(&["--path", &path, "invite", "accept", &room.invite()]);
    (room, a)
}

/// Whether `needle` is anywhere in the memory of process `pid` (read
/// through /proc as root), in one-byte or in UTF-16 form as V8 keeps
/// strings.
pub fn memory_contains(pid: u32, needle: &str) -> bool {
    use std::io::{Read, Seek, SeekFrom};
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("maps");
    let mut mem = std::fs::File::open(format!("/proc/{pid}/mem")).expect("mem");
    let narrow = needle.as_bytes().to_vec();
    let wide: Vec<u8> = needle.encode_utf16().flat_map(u16::to_le_bytes).collect();
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else {
            continue;
        };
        if !perms.starts_with('r') {
            continue;
        }
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (u64::from_str_radix(start, 16), u64::from_str_radix(end, 16))
        else {
            continue;
        };
        if end - start > 1 << 30 {
            continue;
        }
        let mut region = vec![0u8; (end - start) as usize];
        if mem.seek(SeekFrom::Start(start)).is_err() || mem.read_exact(&mut region).is_err() {
            continue;
        }
        for pattern in [&narrow, &wide] {
            if memchr::memmem::find(&region, pattern).is_some() {
                return true;
            }
        }
    }
    false
}
