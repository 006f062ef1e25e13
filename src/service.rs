//! `scuttlefs service install|uninstall|status`: the per-user service that
//! runs `serve` from login on (a systemd user unit on Linux, a launchd
//! agent on macOS). Every step is planned first ([`Plan`]), so that
//! `--dry-run` prints exactly what would be done, and doing it is running
//! the same plan.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The unit's (and agent's) name.
pub const UNIT: &str = "scuttlefs.service";
/// The launchd agent's label.
pub const AGENT: &str = "com.scuttlefs";

/// Why a service step failed.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// No home directory to install into.
    #[error("HOME is not set: cannot tell where the per-user service goes")]
    NoHome,
    /// Writing or removing a file.
    #[error("{what} {path}: {source}")]
    File {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why it failed.
        source: std::io::Error,
    },
    /// A command of the plan failed.
    #[error("`{command}` failed: {reason}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status and what it printed.
        reason: String,
    },
    /// Neither systemd nor launchd here.
    #[error(
        "this system has neither systemd nor launchd: start `scuttlefs serve` from your own init"
    )]
    Unsupported,
}

/// Which service manager.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Manager {
    /// systemd, as the user's manager (`systemctl --user`).
    Systemd,
    /// launchd, as a login agent.
    Launchd,
}

impl Manager {
    /// The one this system has.
    pub fn here() -> Manager {
        if cfg!(target_os = "macos") {
            Manager::Launchd
        } else {
            Manager::Systemd
        }
    }
}

/// What the service runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceSpec {
    /// The scuttlefs binary (absolute).
    pub binary: PathBuf,
    /// `--path`, absolute.
    pub data: PathBuf,
    /// Where it mounts, absolute.
    pub mount: PathBuf,
    /// The home directory.
    pub home: PathBuf,
    /// Where per-user configuration lives (`$XDG_CONFIG_HOME`, else
    /// `~/.config`).
    pub config_home: PathBuf,
}

impl ServiceSpec {
    /// The spec for this user: `binary` mounted at `mount` (default
    /// `~/scuttlefs`), data in `data` (default `~/.scuttlefs`).
    pub fn for_user(
        binary: PathBuf,
        data: Option<PathBuf>,
        mount: Option<PathBuf>,
    ) -> Result<ServiceSpec, ServiceError> {
        let home = std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .map(PathBuf::from)
            .ok_or(ServiceError::NoHome)?;
        let absolute = |path: PathBuf| {
            if path.is_absolute() {
                path
            } else {
                std::env::current_dir().map_or(path.clone(), |dir| dir.join(path))
            }
        };
        let config_home = std::env::var_os("XDG_CONFIG_HOME")
            .filter(|h| !h.is_empty())
            .map_or_else(|| home.join(".config"), PathBuf::from);
        Ok(ServiceSpec {
            binary: absolute(binary),
            data: absolute(data.unwrap_or_else(crate::config::Config::default_path)),
            mount: absolute(mount.unwrap_or_else(|| home.join("scuttlefs"))),
            config_home,
            home,
        })
    }

    /// Where the unit or agent file goes.
    pub fn file(&self, manager: Manager) -> PathBuf {
        match manager {
            Manager::Systemd => self.config_home.join("systemd/user").join(UNIT),
            Manager::Launchd => self
                .home
                .join("Library/LaunchAgents")
                .join(format!("{AGENT}.plist")),
        }
    }

    /// The systemd user unit.
    pub fn systemd_unit(&self) -> String {
        format!(
            "# Written by `scuttlefs service install`; `scuttlefs service uninstall` removes it.\n\
             [Unit]\n\
             Description=scuttlefs: this machine's log feed, replicated and mounted\n\
             After=network-online.target\n\
             Wants=network-online.target\n\
             \n\
             [Service]\n\
             Type=simple\n\
             ExecStart={binary} serve --path {data} --mount {mount}\n\
             # SIGTERM unmounts; this clears a mount a killed daemon left.\n\
             ExecStopPost=-/bin/sh -c 'fusermount3 -uz {mount} 2>/dev/null || true'\n\
             KillSignal=SIGTERM\n\
             TimeoutStopSec=20\n\
             Restart=on-failure\n\
             RestartSec=5\n\
             Environment=RUST_LOG=info\n\
             \n\
             [Install]\n\
             WantedBy=default.target\n",
            binary = systemd_quote(&self.binary),
            data = systemd_quote(&self.data),
            mount = systemd_quote(&self.mount),
        )
    }

    /// The launchd agent.
    pub fn launchd_agent(&self) -> String {
        let xml = |p: &Path| {
            p.display()
                .to_string()
                .replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;")
        };
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
             <!DOCTYPE plist PUBLIC \"-//Apple//DTD PLIST 1.0//EN\" \"http://www.apple.com/DTDs/PropertyList-1.0.dtd\">\n\
             <!-- Written by `scuttlefs service install`. -->\n\
             <plist version=\"1.0\">\n<dict>\n\
             \x20 <key>Label</key><string>{AGENT}</string>\n\
             \x20 <key>ProgramArguments</key>\n  <array>\n\
             \x20   <string>{binary}</string><string>serve</string>\n\
             \x20   <string>--path</string><string>{data}</string>\n\
             \x20   <string>--mount</string><string>{mount}</string>\n\
             \x20 </array>\n\
             \x20 <key>RunAtLoad</key><true/>\n\
             \x20 <key>KeepAlive</key><dict><key>SuccessfulExit</key><false/></dict>\n\
             \x20 <key>ThrottleInterval</key><integer>5</integer>\n\
             \x20 <key>StandardErrorPath</key><string>{log}</string>\n\
             </dict>\n</plist>\n",
            binary = xml(&self.binary),
            data = xml(&self.data),
            mount = xml(&self.mount),
            log = xml(&self.home.join("Library/Logs/scuttlefs.log")),
        )
    }
}

/// A path as one word of a systemd command line.
fn systemd_quote(path: &Path) -> String {
    let text = path.display().to_string();
    if text
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/._-+@".contains(&b))
    {
        return text.replace('%', "%%");
    }
    format!(
        "\"{}\"",
        text.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('%', "%%")
    )
}

/// One step of a plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Create a directory (and its parents).
    MakeDir(PathBuf),
    /// Write a file.
    Write {
        /// The file.
        path: PathBuf,
        /// Its contents.
        contents: String,
    },
    /// Remove a file (if it is there).
    Remove(PathBuf),
    /// Run a command.
    Run(Vec<String>),
}

impl Step {
    /// The step as a person reads it: a shell line where one does it.
    pub fn describe(&self) -> String {
        match self {
            Step::MakeDir(path) => format!("mkdir -p {}", path.display()),
            Step::Write { path, contents } => {
                format!("write {}:\n{}", path.display(), indent(contents))
            }
            Step::Remove(path) => format!("rm -f {}", path.display()),
            Step::Run(words) => words.join(" "),
        }
    }
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("    {l}\n"))
        .collect::<String>()
}

/// What `install` or `uninstall` does, in order.
pub type Plan = Vec<Step>;

/// The steps that install, enable and start the service.
pub fn install_plan(spec: &ServiceSpec, manager: Manager) -> Plan {
    let file = spec.file(manager);
    let mut plan = vec![Step::MakeDir(spec.mount.clone())];
    if let Some(dir) = file.parent() {
        plan.push(Step::MakeDir(dir.to_path_buf()));
    }
    match manager {
        Manager::Systemd => {
            plan.push(Step::Write {
                path: file,
                contents: spec.systemd_unit(),
            });
            plan.push(Step::Run(words(&["systemctl", "--user", "daemon-reload"])));
            plan.push(Step::Run(words(&[
                "systemctl",
                "--user",
                "enable",
                "--now",
                UNIT,
            ])));
        }
        Manager::Launchd => {
            plan.push(Step::Write {
                path: file.clone(),
                contents: spec.launchd_agent(),
            });
            plan.push(Step::Run(vec![
                "launchctl".into(),
                "load".into(),
                "-w".into(),
                file.display().to_string(),
            ]));
        }
    }
    plan
}

/// The steps that stop, disable and remove it.
pub fn uninstall_plan(spec: &ServiceSpec, manager: Manager) -> Plan {
    let file = spec.file(manager);
    match manager {
        Manager::Systemd => vec![
            Step::Run(words(&["systemctl", "--user", "disable", "--now", UNIT])),
            Step::Remove(file),
            Step::Run(words(&["systemctl", "--user", "daemon-reload"])),
        ],
        Manager::Launchd => vec![
            Step::Run(vec![
                "launchctl".into(),
                "unload".into(),
                "-w".into(),
                file.display().to_string(),
            ]),
            Step::Remove(file),
        ],
    }
}

fn words(list: &[&str]) -> Vec<String> {
    list.iter().map(|w| w.to_string()).collect()
}

/// Carries out `plan`, stopping at the first step that fails. A command
/// that `may_fail` (stopping a service that is not running) is reported
/// and passed over.
pub fn carry_out(plan: &Plan, may_fail: bool) -> Result<(), ServiceError> {
    for step in plan {
        match step {
            Step::MakeDir(path) => {
                std::fs::create_dir_all(path).map_err(|source| ServiceError::File {
                    what: "creating",
                    path: path.clone(),
                    source,
                })?
            }
            Step::Write { path, contents } => {
                std::fs::write(path, contents).map_err(|source| ServiceError::File {
                    what: "writing",
                    path: path.clone(),
                    source,
                })?
            }
            Step::Remove(path) => match std::fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(ServiceError::File {
                        what: "removing",
                        path: path.clone(),
                        source,
                    })
                }
            },
            Step::Run(words) => {
                let outcome = run(words);
                match outcome {
                    Ok(()) => {}
                    Err(e) if may_fail => eprintln!("scuttlefs service: {e} (going on)"),
                    Err(e) => return Err(e),
                }
            }
        }
    }
    Ok(())
}

fn run(words: &[String]) -> Result<(), ServiceError> {
    let command = words.join(" ");
    let (program, args) = words.split_first().ok_or(ServiceError::Unsupported)?;
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| ServiceError::Command {
            command: command.clone(),
            reason: e.to_string(),
        })?;
    if output.status.success() {
        return Ok(());
    }
    let said = String::from_utf8_lossy(&output.stderr).trim().to_string();
    Err(ServiceError::Command {
        command,
        reason: format!("{}: {said}", output.status),
    })
}

/// The hint for a machine nobody logs into: without lingering, systemd
/// stops a user's services when their last session ends, and starts them
/// only at login.
pub fn linger_hint(user: &str) -> Option<String> {
    if cfg!(target_os = "macos") || Path::new("/var/lib/systemd/linger").join(user).exists() {
        return None;
    }
    Some(format!(
        "On a machine nobody logs into, let the service run without a login: \
         sudo loginctl enable-linger {user}"
    ))
}

/// `service status`: where the file is, and what the manager says.
pub fn status(spec: &ServiceSpec, manager: Manager) -> String {
    let file = spec.file(manager);
    let mut out = format!(
        "{}: {}\n",
        file.display(),
        if file.exists() {
            "installed"
        } else {
            "not installed"
        }
    );
    let query: &[&str] = match manager {
        Manager::Systemd => &["systemctl", "--user", "is-active", UNIT],
        Manager::Launchd => &["launchctl", "list", AGENT],
    };
    match Command::new(query[0]).args(&query[1..]).output() {
        Ok(output) => {
            let said = String::from_utf8_lossy(&output.stdout).trim().to_string();
            let said = if said.is_empty() {
                String::from_utf8_lossy(&output.stderr).trim().to_string()
            } else {
                said
            };
            out.push_str(&format!("{}: {said}\n", query.join(" ")));
        }
        Err(e) => out.push_str(&format!("{}: {e}\n", query.join(" "))),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ServiceSpec {
        ServiceSpec {
            binary: "/usr/bin/scuttlefs".into(),
            data: "/home/me/.scuttlefs".into(),
            mount: "/home/me/my logs".into(),
            home: "/home/me".into(),
            config_home: "/home/me/.config".into(),
        }
    }

    #[test]
    fn the_unit_runs_serve_with_quoted_paths() {
        let unit = spec().systemd_unit();
        assert!(unit.contains(
            "ExecStart=/usr/bin/scuttlefs serve --path /home/me/.scuttlefs --mount \"/home/me/my logs\"\n"
        ), "{unit}");
        assert!(unit.contains("WantedBy=default.target"));
        assert_eq!(
            spec().file(Manager::Systemd),
            PathBuf::from("/home/me/.config/systemd/user/scuttlefs.service")
        );
    }

    #[test]
    fn install_writes_then_enables_and_uninstall_undoes_it() {
        let plan = install_plan(&spec(), Manager::Systemd);
        let described: Vec<String> = plan.iter().map(Step::describe).collect();
        assert_eq!(described[0], "mkdir -p /home/me/my logs");
        assert!(described[2].starts_with("write /home/me/.config/systemd/user/scuttlefs.service:"));
        assert_eq!(described[3], "systemctl --user daemon-reload");
        assert_eq!(
            described[4],
            "systemctl --user enable --now scuttlefs.service"
        );
        let undo: Vec<String> = uninstall_plan(&spec(), Manager::Systemd)
            .iter()
            .map(Step::describe)
            .collect();
        assert_eq!(
            undo,
            vec![
                "systemctl --user disable --now scuttlefs.service",
                "rm -f /home/me/.config/systemd/user/scuttlefs.service",
                "systemctl --user daemon-reload",
            ]
        );
        let agent = install_plan(&spec(), Manager::Launchd);
        assert!(agent
            .iter()
            .any(|s| s.describe().contains("<string>/home/me/my logs</string>")));
    }
}
