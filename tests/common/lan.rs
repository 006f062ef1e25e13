//! Test hosts in network namespaces: a private LAN on one machine.

use std::process::Command;

use super::system_available;

pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip runs");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A private LAN: a switch namespace holding a bridge, and one namespace per
/// host with a veth on it, an address in 10.213.0.0/24 and a default route
/// (so that 255.255.255.255 is reachable, as on a real LAN).
pub struct Lan {
    prefix: String,
    hosts: Vec<String>,
}

impl Lan {
    pub fn available() -> bool {
        // SAFETY: geteuid cannot fail.
        let root = unsafe { libc::geteuid() } == 0;
        let tools = Command::new("ip").arg("-V").output().is_ok()
            && Command::new("nsenter").arg("--version").output().is_ok();
        system_available(
            "root with ip and nsenter (network namespaces)",
            root && tools,
        ) && super::fuse_available()
    }

    pub fn new(tag: &str) -> Lan {
        let prefix = format!("sf{}{tag}", std::process::id() % 100_000);
        let lan = Lan {
            prefix,
            hosts: Vec::new(),
        };
        let sw = lan.switch();
        ip(&["netns", "add", &sw]);
        ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &sw, "link", "set", "br0", "up"]);
        lan
    }

    pub fn switch(&self) -> String {
        format!("{}sw", self.prefix)
    }

    /// Adds host number `n` (1..=250) and returns its namespace.
    pub fn host(&mut self, n: u8) -> String {
        let ns = format!("{}h{n}", self.prefix);
        let sw = self.switch();
        ip(&["netns", "add", &ns]);
        let port = format!("p{n}");
        ip(&[
            "link", "add", &port, "netns", &sw, "type", "veth", "peer", "name", "eth0", "netns",
            &ns,
        ]);
        ip(&["-n", &sw, "link", "set", &port, "master", "br0"]);
        ip(&["-n", &sw, "link", "set", &port, "up"]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("10.213.0.{n}/24"),
            "dev",
            "eth0",
        ]);
        ip(&["-n", &ns, "link", "set", "eth0", "up"]);
        ip(&["-n", &ns, "route", "add", "default", "dev", "eth0"]);
        self.hosts.push(ns.clone());
        ns
    }

    /// Host `n` loses power and boots again: its namespace, with every
    /// socket in it, is destroyed while its link is down (so no FIN or RST
    /// leaves), then made anew with the same address. The daemon in it must
    /// have been killed first.
    pub fn reboot(&mut self, n: u8) -> String {
        let ns = format!("{}h{n}", self.prefix);
        ip(&["-n", &ns, "link", "set", "eth0", "down"]);
        // Deleting a namespace frees its devices later, in the background:
        // remove the link now, so that it can be made again at once.
        ip(&["-n", &self.switch(), "link", "del", &format!("p{n}")]);
        ip(&["netns", "del", &ns]);
        self.hosts.retain(|h| h != &ns);
        self.host(n)
    }

    pub fn cut(&self, ns: &str) {
        ip(&["-n", ns, "link", "set", "eth0", "down"]);
    }

    /// Whether a TCP connection from namespace `ns` to `addr:port` opens
    /// within a few seconds.
    pub fn can_connect(&self, ns: &str, addr: &str, port: u16) -> bool {
        super::sites::port_open(ns, addr, port)
    }

    pub fn restore(&self, ns: &str) {
        ip(&["-n", ns, "link", "set", "eth0", "up"]);
        let _ = Command::new("ip")
            .args(["-n", ns, "route", "replace", "default", "dev", "eth0"])
            .output();
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for ns in self.hosts.iter().chain(std::iter::once(&self.switch())) {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}
