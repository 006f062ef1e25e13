//! ssb-server 16 from the npm registry, the reference peer, run in a
//! temporary directory (and a network namespace when asked) and driven
//! through tests/js/sbot.js.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::wait_until;

/// The network key the tests share with ssb-server.
pub const KEY: &str = "D9ZJ0MfrQ/mCwaP8kCDVZ3Sz1YqYkTiXAzyHbdXw3Wc=";

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A running ssb-server on loopback, driven through tests/js/sbot.js.
pub struct SsbServer {
    child: Child,
    pub path: std::path::PathBuf,
    pub port: u16,
    pub netns: Option<String>,
    /// Where sbot.js connects: loopback, or the host's LAN address.
    pub host: String,
}

/// `node`, inside network namespace `netns` when given.
pub fn node_command(netns: Option<&str>) -> Command {
    match netns {
        Some(ns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net=/var/run/netns/{ns}")).arg("node");
            c
        }
        None => Command::new("node"),
    }
}

impl SsbServer {
    /// ssb-server on loopback, on free ports.
    pub fn start(dir: &std::path::Path) -> SsbServer {
        // No LAN broadcasts from a loopback test: only the namespace test
        // below lets ssb-server announce itself.
        SsbServer::start_in(
            dir,
            None,
            free_port(),
            &["--host", "127.0.0.1", "--no-gossip.local"],
        )
    }

    pub fn start_in(
        dir: &std::path::Path,
        netns: Option<&str>,
        port: u16,
        extra: &[&str],
    ) -> SsbServer {
        let path = dir.join("ssb-server");
        let ws_port = free_port();
        let js = super::repo().join("tests/js");
        let log = std::fs::File::create(dir.join("ssb-server.log")).expect("log");
        let child = node_command(netns)
            .arg(js.join("node_modules/ssb-server/bin.js"))
            .args(["start", "--path"])
            .arg(&path)
            .args(["--port", &port.to_string()])
            .args(["--ws.port", &ws_port.to_string()])
            .args(["--caps.shs", KEY])
            .args(extra)
            .current_dir(&js)
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("ssb-server starts");
        let host = extra
            .windows(2)
            .find(|w| w[0] == "--host")
            .map_or("127.0.0.1", |w| w[1])
            .to_string();
        let server = SsbServer {
            child,
            path,
            port,
            netns: netns.map(str::to_string),
            host,
        };
        assert!(
            wait_until(Duration::from_secs(30), || server
                .try_sbot(&["whoami"])
                .is_some()),
            "ssb-server did not come up"
        );
        server
    }

    pub fn try_sbot(&self, args: &[&str]) -> Option<String> {
        let out = node_command(self.netns.as_deref())
            .arg(super::repo().join("tests/js/sbot.js"))
            .arg(&self.path)
            .arg(self.port.to_string())
            .arg(KEY)
            .args(args)
            .env("SBOT_HOST", &self.host)
            .current_dir(super::repo().join("tests/js"))
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Runs sbot.js, retrying a few times: a busy ssb-server can miss
    /// ssb-client's connection timeout.
    pub fn sbot(&self, args: &[&str]) -> String {
        for _ in 0..4 {
            if let Some(out) = self.try_sbot(args) {
                return out;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        panic!("sbot.js {args:?} failed")
    }

    pub fn id(&self) -> String {
        self.sbot(&["whoami"])
    }

    /// `net:127.0.0.1:PORT~shs:KEY`, for `--peer`.
    pub fn address(&self) -> String {
        let id = self.id();
        format!("net:127.0.0.1:{}~shs:{}", self.port, &id[1..id.len() - 8])
    }
}

impl Drop for SsbServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
