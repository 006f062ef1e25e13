//! Two sites that cannot reach each other, and a middle host both reach:
//! a home network, an office, and a VPS.
//!
//! ```text
//!   site A 10.71.1.2 ──veth── 10.71.1.1 ┐
//!                                       middle: 10.71.0.1 (its public address)
//!   site B 10.71.2.2 ──veth── 10.71.2.1 ┘
//! ```
//!
//! Each site routes only to the middle's public address; the middle does
//! not forward, so nothing passes from one site to the other except through
//! a process in the middle.

use std::process::Command;

use super::lan::ip;

/// The middle host's address, as both sites reach it.
pub const MIDDLE: &str = "10.71.0.1";
/// Site A's address.
pub const SITE_A: &str = "10.71.1.2";
/// Site B's address.
pub const SITE_B: &str = "10.71.2.2";

/// The three namespaces.
pub struct Sites {
    /// Site A's namespace.
    pub a: String,
    /// Site B's namespace.
    pub b: String,
    /// The middle host's namespace.
    pub middle: String,
}

impl Sites {
    /// Makes the three hosts; `tag` keeps the names of tests that run at
    /// once apart.
    pub fn new(tag: &str) -> Sites {
        let prefix = format!("sf{}{tag}", std::process::id() % 100_000);
        let sites = Sites {
            a: format!("{prefix}a"),
            b: format!("{prefix}b"),
            middle: format!("{prefix}m"),
        };
        for ns in [&sites.a, &sites.b, &sites.middle] {
            ip(&["netns", "add", ns]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        let m = &sites.middle;
        ip(&["-n", m, "addr", "add", &format!("{MIDDLE}/32"), "dev", "lo"]);
        let forwarding = Command::new("ip")
            .args(["netns", "exec", m, "sysctl", "-qw", "net.ipv4.ip_forward=0"])
            .status()
            .expect("sysctl runs");
        assert!(forwarding.success(), "cannot turn forwarding off");
        for (site, link, net) in [(&sites.a, "ethA", "10.71.1"), (&sites.b, "ethB", "10.71.2")] {
            ip(&[
                "link", "add", link, "netns", m, "type", "veth", "peer", "name", "eth0", "netns",
                site,
            ]);
            ip(&["-n", m, "addr", "add", &format!("{net}.1/24"), "dev", link]);
            ip(&["-n", m, "link", "set", link, "up"]);
            ip(&[
                "-n",
                site,
                "addr",
                "add",
                &format!("{net}.2/24"),
                "dev",
                "eth0",
            ]);
            ip(&["-n", site, "link", "set", "eth0", "up"]);
            ip(&[
                "-n",
                site,
                "route",
                "add",
                &format!("{MIDDLE}/32"),
                "via",
                &format!("{net}.1"),
            ]);
        }
        sites
    }

    /// Whether a TCP connection from namespace `ns` to `addr:port` opens
    /// within a few seconds.
    pub fn can_connect(&self, ns: &str, addr: &str, port: u16) -> bool {
        port_open(ns, addr, port)
    }

    /// Asserts the topology: both sites reach the middle's `port`, and
    /// neither reaches the other's `port`, by address or through the middle.
    pub fn assert_isolated(&self, port: u16) {
        assert!(
            self.can_connect(&self.a, MIDDLE, port),
            "site A cannot reach the middle"
        );
        assert!(
            self.can_connect(&self.b, MIDDLE, port),
            "site B cannot reach the middle"
        );
        assert!(
            !self.can_connect(&self.a, SITE_B, port),
            "site A reaches site B directly"
        );
        assert!(
            !self.can_connect(&self.b, SITE_A, port),
            "site B reaches site A directly"
        );
    }
}

/// Whether a TCP connection from namespace `ns` to `addr:port` opens within
/// a few seconds.
pub fn port_open(ns: &str, addr: &str, port: u16) -> bool {
    Command::new("nsenter")
        .arg(format!("--net=/var/run/netns/{ns}"))
        .args(["timeout", "3", "bash", "-c"])
        .arg(format!("exec 3<>/dev/tcp/{addr}/{port}"))
        .stderr(std::process::Stdio::null())
        .status()
        .expect("nsenter runs")
        .success()
}

impl Drop for Sites {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b, &self.middle] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}
