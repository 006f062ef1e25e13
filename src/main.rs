//! The `scuttlefs` command.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::CommandFactory;
use clap::{Parser, Subcommand};
use serde_json::{Map, Value};

use scuttlefs::alert;
use scuttlefs::cli::{publish_content, split_globals};
use scuttlefs::clock::now_ms;
use scuttlefs::config::{Config, Overrides};
use scuttlefs::control::{self, LogFormat, Request, RequestError};
use scuttlefs::daemon::{self, ServeOptions};
use scuttlefs::feed::json::to_js_pretty;
use scuttlefs::feed::FeedId;
use scuttlefs::node::{Node, NodeError};
use scuttlefs::query::status;
use scuttlefs::run;
use scuttlefs::store::StoreError;
use scuttlefs::vocab::{parse_duration, MUTE_TYPE, RETIRE_TYPE};

/// Secure Scuttlebutt feeds, replicated between machines and mounted as a
/// filesystem.
///
/// Global options, accepted before or after the command as sbot accepts
/// them: --path DIR (default ~/.scuttlefs), --port N (default 8008),
/// --caps.shs KEY (the network key, base64 of 32 bytes).
#[derive(Parser)]
#[command(name = "scuttlefs", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    // The global options are taken out of the line before clap sees it
    // (`split_globals`, which stops at `--`); they are declared here so
    // that every command's --help lists them.
    /// The data directory: identity, config, store [default: ~/.scuttlefs]
    #[arg(long, global = true, value_name = "DIR")]
    path: Option<PathBuf>,
    /// TCP port to listen on and UDP port for LAN discovery [default: 8008]
    #[arg(long, global = true, value_name = "N")]
    port: Option<u16>,
    /// The network key (base64 of 32 bytes); saved in <DIR>/config
    #[arg(long = "caps.shs", global = true, value_name = "KEY")]
    caps_shs: Option<String>,
}

/// `run`'s options, which clap cannot parse (any `--FIELD VALUE` is a field).
const RUN_HELP: &str = "\
Options before --:
      --source NAME   Names the job (required); on every line it publishes
      --every D       How often it should run (90s, 30m, 1h, 1d): later than that is late
      --cron EXPR     When it should run, as cron says it (\"0 2 * * *\"; six fields for seconds)
      --tz ZONE       The zone --cron is judged in (Europe/Berlin; default: this machine's)
      --grace D       How long past its time it may start before it is late (default: a tenth
                      of its interval)
      --timeout D     How long a run may take: longer, and it is stuck
      --quiet         Do not echo the command's output
      --FIELD VALUE   Any other field, on every line (--FIELD=VALUE for a value that begins with -)

Everything after -- is the command and its arguments, passed on untouched
(including --path, --port and --caps.shs).";

/// `publish`'s options, which clap cannot parse (any `--FIELD VALUE` is a field).
const PUBLISH_HELP: &str = "\
Options:
      --type T        The message type (required without --stdin): log, contact, …
      --text TEXT     The line; --text=VALUE for a value that begins with -
      --FIELD VALUE   Any other content field; a --FIELD without a value is true
      --stdin         Publish each line of standard input as the text of one message";

// Parsed once per process: the size of `serve`'s variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run the daemon: replicate feeds and mount them.
    Serve {
        /// Where to mount [default: the config's `mount`, else ./mount].
        #[arg(long)]
        mount: Option<PathBuf>,
        /// Run without mounting.
        #[arg(long)]
        no_mount: bool,
        /// This machine's name (default: the hostname).
        #[arg(long)]
        name: Option<String>,
        /// Replicate feeds this many follow hops away (default 3).
        #[arg(long)]
        hops: Option<u32>,
        /// Also dial this peer, e.g. a pub: net:HOST:PORT~shs:KEY (repeatable).
        #[arg(long = "peer")]
        peers: Vec<String>,
        /// Let other users read the mount.
        #[arg(long)]
        allow_other: bool,
        /// Do not broadcast or listen for LAN peers.
        #[arg(long)]
        no_discovery: bool,
        /// The name or address other machines reach this one at, printed
        /// in the invites it makes (saved in the config).
        #[arg(long)]
        host: Option<String>,
        /// Join this room: net:HOST:PORT~shs:KEY (repeatable; remembered).
        #[arg(long = "room")]
        rooms: Vec<String>,
        /// The rooms' network key, when not this network's: base64, or
        /// `main` for the main SSB network (public rooms).
        #[arg(long)]
        room_caps: Option<String>,
        /// How long a machine may be silent before it counts as quiet, in
        /// mount/health, `health` and alerts (default 26h; saved in the
        /// config).
        #[arg(long)]
        max_silence: Option<String>,
        /// How often an alert is repeated while its trouble lasts: a
        /// duration, or `off` (default 1d; saved in the config).
        #[arg(long)]
        remind: Option<String>,
        /// Serve the status page, metrics and badges at HOST:PORT, or
        /// `off` (default 127.0.0.1:8807; saved in the config). Beyond
        /// loopback it needs --http-token.
        #[arg(long)]
        http: Option<String>,
        /// The token every request to the status page must carry, as
        /// `Authorization: Bearer T` or once as `?token=T` in a browser
        /// (saved in the config).
        #[arg(long)]
        http_token: Option<String>,
    },
    /// Every job on every machine: failed, late, running or ok, worst
    /// first; machines silent too long. Exit 0 when all is well, 1 when the
    /// daemon is down, 3 when a job failed or is late or a machine is quiet.
    Health {
        /// How long a machine may be silent (default 26h).
        #[arg(long)]
        max_silence: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run a job's command and publish what it prints, then a last line
    /// with its exit code and duration; exit as the command did:
    /// scuttlefs run --source NAME [--every 1d] [--quiet] [--FIELD VALUE]… -- COMMAND [ARGS…]
    #[command(after_help = RUN_HELP)]
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
        args: Vec<std::ffi::OsString>,
    },
    /// Where alerts go when a job fails, is late, or a machine goes
    /// quiet: exec:/path/to/program (run with the alert in its environment
    /// and as JSON on stdin).
    Alert {
        #[command(subcommand)]
        action: AlertAction,
    },
    /// Jobs that are gone: scuttlefs job retire MACHINE/SOURCE.
    Job {
        #[command(subcommand)]
        action: JobAction,
    },
    /// Join the network of the machine that made CODE (`scuttlefs
    /// join-code` there): saves the network key and name, follows it and is
    /// followed; then a bare `scuttlefs serve` reaches every machine.
    Join {
        /// The code, as join-code printed it.
        code: String,
        /// This machine's name (default: the hostname).
        #[arg(long)]
        name: Option<String>,
        /// Where `serve` mounts from now on (saved; default ./mount, or
        /// ~/scuttlefs with --service).
        #[arg(long)]
        mount: Option<PathBuf>,
        /// Then install and start the per-user service.
        #[arg(long)]
        service: bool,
    },
    /// Make a join code for a new machine: one line to give it. The code is
    /// a secret: it holds the network key.
    JoinCode {
        /// How many machines may join with it.
        #[arg(long, default_value_t = 1)]
        uses: u32,
        /// How long it works.
        #[arg(long, default_value = "7d")]
        expires: String,
        /// List the codes not yet used up, and do nothing else.
        #[arg(long)]
        list: bool,
        /// Revoke the code with this id (from --list).
        #[arg(long, value_name = "ID")]
        revoke: Option<String>,
    },
    /// The per-user service that runs `serve` from login on: a systemd
    /// user unit (Linux) or a launchd agent (macOS).
    Service {
        #[command(subcommand)]
        action: ServiceAction,
    },
    /// Print shell completions: scuttlefs completions bash > /etc/bash_completion.d/scuttlefs
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Write a man page for every command into DIR (for packagers).
    #[command(hide = true)]
    Manpages {
        /// Where the pages go.
        dir: PathBuf,
    },
    /// Pub invites: join a pub or room, or let others join this machine.
    Invite {
        #[command(subcommand)]
        action: InviteAction,
    },
    /// Print this machine's id.
    Whoami,
    /// Publish a message: every --key value becomes a content field
    /// (--type log --source laptop --text "…"). With --stdin, each input
    /// line is one message with those fields.
    #[command(after_help = PUBLISH_HELP)]
    Publish {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
        args: Vec<String>,
    },
    /// Print every stored message in receive order (as `sbot log` does);
    /// with --follow, go on printing each new one as it is stored.
    Log {
        /// Go on printing messages as they arrive, until stopped.
        #[arg(long)]
        follow: bool,
        /// Remember in FILE the last message printed, and start after it:
        /// each message is printed once across stops of this command and
        /// restarts of the daemon (journalctl's convention).
        #[arg(long, value_name = "FILE")]
        cursor_file: Option<PathBuf>,
        /// `json` (sbot's, the default) or `text` (merged.log's lines).
        #[arg(long, default_value = "json")]
        format: LogFormat,
    },
    /// Follow a feed.
    Follow {
        /// @<key>.ed25519
        id: String,
    },
    /// Stop following a feed.
    Unfollow {
        /// @<key>.ed25519
        id: String,
    },
    /// Show peers, feeds and replication progress; exit 1 if the daemon is
    /// down, 2 if it has had no peer for longer than --max-silence.
    Status {
        /// e.g. 1h: how long without any peer counts as a failure.
        #[arg(long)]
        max_silence: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum AlertAction {
    /// Add a target: exec:/path/to/program.
    Add {
        /// The target URL.
        url: String,
    },
    /// List the targets (credentials masked).
    List,
    /// Remove a target, as added or as listed.
    Remove {
        /// The target URL.
        url: String,
    },
    /// Send a test alert now, to every target or to the one given; exit 0
    /// when every delivery worked.
    Test {
        /// A target URL (default: every configured target).
        url: Option<String>,
    },
    /// Mute alerts about a machine or one of its jobs, on every machine,
    /// for maintenance: scuttlefs alert mute nas/backup-home --for 2h
    /// (--for 0 ends a mute). Alerts are judged again when it ends.
    Mute {
        /// MACHINE or MACHINE/SOURCE (a machine's name or @id).
        what: String,
        /// How long, e.g. 30m, 2h, 1d.
        #[arg(long = "for")]
        duration: String,
    },
}

#[derive(Subcommand)]
enum JobAction {
    /// Retire a job that was renamed or dropped: it leaves mount/health,
    /// health and alerts on every machine, until it runs again.
    Retire {
        /// MACHINE/SOURCE (a machine's name or @id, and the job's source).
        job: String,
    },
}

#[derive(Subcommand)]
enum InviteAction {
    /// Redeem an invite from a pub (ssb-server, or a scuttlefs with --host)
    /// or a room: HOST:PORT:@KEY.ed25519~SEED or net:HOST:PORT~shs:KEY:SEED.
    /// The pub then follows this machine, this machine follows the pub, and
    /// the daemon keeps dialling it.
    Accept {
        /// The invite code.
        code: String,
        /// A room's network key, when not this network's: base64, or
        /// `main` for the main SSB network (public rooms).
        #[arg(long)]
        room_caps: Option<String>,
    },
    /// Print an invite code for other machines to redeem here.
    Create {
        /// How many machines may redeem it.
        #[arg(long, default_value_t = 1)]
        uses: u32,
    },
}

fn main() -> ExitCode {
    scuttlefs::platform::limit_malloc_arenas();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,fuser=error")),
        )
        .with_writer(std::io::stderr)
        // Colour codes are noise in files, pipes and the journal.
        .with_ansi(colour_logs())
        .init();
    // `args_os`: a job's command may name files in any encoding.
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    match run(args) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("scuttlefs: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Whether log lines may carry terminal colour codes: only on a terminal,
/// and not when NO_COLOR is set to anything but "" (no-color.org).
fn colour_logs() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

fn run(args: Vec<std::ffi::OsString>) -> Result<ExitCode, String> {
    let (mut overrides, rest) = split_globals(&args).map_err(|e| e.to_string())?;
    let cli = match Cli::try_parse_from(std::iter::once("scuttlefs".into()).chain(rest)) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return Ok(if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            });
        }
    };
    // Never set (split_globals took them first), but honoured if they were.
    overrides.path = overrides.path.or(cli.path);
    overrides.port = overrides.port.or(cli.port);
    overrides.network_key = overrides.network_key.or(cli.caps_shs);
    // A followed log handles a closed output itself: it must not die
    // between printing and saving its cursor.
    let follows = matches!(
        cli.command,
        Command::Log { follow: true, .. }
            | Command::Log {
                cursor_file: Some(_),
                ..
            }
    );
    // `alert test` writes to an exec target's stdin, which may close first:
    // that must be the target's failure, not a SIGPIPE that kills us.
    let writes_to_children = matches!(
        cli.command,
        Command::Serve { .. } | Command::Run { .. } | Command::Alert { .. }
    );
    if !follows && !writes_to_children {
        scuttlefs::platform::exit_on_closed_stdout();
    }
    match cli.command {
        Command::Serve {
            mount,
            no_mount,
            name,
            hops,
            peers,
            allow_other,
            no_discovery,
            host,
            rooms,
            room_caps,
            max_silence,
            remind,
            http,
            http_token,
        } => {
            overrides.max_silence = max_silence;
            overrides.remind = remind;
            overrides.http = http;
            overrides.http_token = http_token;
            overrides.name = name;
            overrides.hops = hops;
            overrides.host = host;
            let config = Config::load(&overrides, true).map_err(|e| e.to_string())?;
            let mount = mount
                .or_else(|| config.mount.clone())
                .unwrap_or_else(|| PathBuf::from("mount"));
            let options = ServeOptions {
                mount: (!no_mount).then_some(mount),
                allow_other,
                peers,
                no_discovery,
                rooms,
                room_caps,
            };
            daemon::serve(config, options).map_err(|e| e.to_string())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Whoami => request(&overrides, Request::Whoami),
        Command::Log {
            follow,
            cursor_file,
            format,
        } => {
            if !follow && cursor_file.is_none() && format == LogFormat::Json {
                return request(&overrides, Request::Log);
            }
            let config = Config::load(&overrides, false).map_err(|e| e.to_string())?;
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::with_capacity(1 << 16, stdout.lock());
            scuttlefs::follow::run(
                &scuttlefs::follow::FollowOptions {
                    socket: &config.socket_path(),
                    cursor_file: cursor_file.as_deref(),
                    follow,
                    format,
                },
                &mut out,
            )
            .map_err(|e| e.to_string())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Publish { args } => {
            let (fields, stdin) = publish_content(&args).map_err(|e| e.to_string())?;
            if stdin {
                let lines = read_stdin_lines()?;
                return request(&overrides, Request::PublishLines { fields, lines });
            }
            if !fields.contains_key("type") {
                return Err("publish needs --type (e.g. --type log --text \"…\")".into());
            }
            request(
                &overrides,
                Request::Publish {
                    contents: vec![Value::Object(fields)],
                },
            )
        }
        Command::Follow { id } => follow(&overrides, &id, true),
        Command::Unfollow { id } => follow(&overrides, &id, false),
        Command::Status { max_silence, json } => status_command(&overrides, max_silence, json),
        Command::Run { args } => run_job(&overrides, &args),
        Command::Health { max_silence, json } => health_command(&overrides, max_silence, json),
        Command::Invite {
            action: InviteAction::Accept { code, room_caps },
        } => request(&overrides, Request::InviteAccept { code, room_caps }),
        Command::Invite {
            action: InviteAction::Create { uses },
        } => request(&overrides, Request::InviteCreate { uses }),
        Command::Alert { action } => alert_command(&overrides, action),
        Command::Job {
            action: JobAction::Retire { job },
        } => retire_job(&overrides, &job),
        Command::Service { action } => service_command(&overrides, action),
        Command::Join {
            code,
            name,
            mount,
            service,
        } => join_command(&overrides, &code, name, mount, service),
        Command::JoinCode {
            uses,
            expires,
            list,
            revoke,
        } => join_code_command(&overrides, uses, &expires, list, revoke),
        Command::Completions { shell } => {
            let mut command = Cli::command();
            clap_complete::generate(shell, &mut command, "scuttlefs", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::Manpages { dir } => write_manpages(&dir),
    }
}

fn join_command(
    overrides: &Overrides,
    code: &str,
    name: Option<String>,
    mount: Option<PathBuf>,
    service: bool,
) -> Result<ExitCode, String> {
    let path = overrides.path.clone().unwrap_or_else(Config::default_path);
    // With the service, the mount is where the service mounts.
    let mount = match (mount, service) {
        (Some(mount), _) => Some(std::path::absolute(&mount).unwrap_or(mount)),
        (None, true) => std::env::var_os("HOME").map(|h| PathBuf::from(h).join("scuttlefs")),
        (None, false) => None,
    };
    let joined =
        scuttlefs::join::join_here(&path, code, name, mount.clone()).map_err(|e| e.to_string())?;
    println!(
        "joined as {} ({}): it and {} now follow each other (reached at {}); \
         the network key and name are saved in {}",
        joined.name,
        joined.me,
        joined.inviter,
        joined.route,
        path.join("config").display()
    );
    if service {
        return service_command(
            overrides,
            ServiceAction::Install {
                mount,
                dry_run: false,
            },
        );
    }
    println!(
        "start it: scuttlefs serve{}",
        match &overrides.path {
            Some(p) => format!(" --path {}", p.display()),
            None => String::new(),
        }
    );
    Ok(ExitCode::SUCCESS)
}

fn join_code_command(
    overrides: &Overrides,
    uses: u32,
    expires: &str,
    list: bool,
    revoke: Option<String>,
) -> Result<ExitCode, String> {
    let config = Config::load(overrides, false).map_err(|e| e.to_string())?;
    let call = |req: Request| -> Result<Option<Vec<Value>>, String> {
        let mut items = Vec::new();
        match control::call(&config.socket_path(), &req, &mut |item| {
            items.push(item);
            Ok(())
        }) {
            Ok(None) => Err(format!(
                "join codes are made by the daemon (it is what the new machine reaches): \
                 start it with scuttlefs serve --path {}",
                config.path.display()
            )),
            Ok(Some(Ok(()))) => Ok(Some(items)),
            Ok(Some(Err(refused))) => Err(refused.message),
            Err(e) => Err(format!("talking to the daemon: {e}")),
        }
    };
    if list {
        let items = call(Request::JoinCodes)?.unwrap_or_default();
        if items.is_empty() {
            println!("(no join codes or invites with uses left)");
        }
        for item in items {
            let s = |k: &str| item[k].as_str().unwrap_or("-").to_string();
            println!(
                "{}  {}  {} use(s) left  made {}  {}",
                s("id"),
                s("kind"),
                item["uses"],
                s("made"),
                match item["expires"].as_str() {
                    Some(at) if item["expired"] == Value::Bool(true) => format!("expired {at}"),
                    Some(at) => format!("expires {at}"),
                    None => "never expires".into(),
                }
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(id) = revoke {
        call(Request::JoinRevoke { id: id.clone() })?;
        println!("revoked {id}");
        return Ok(ExitCode::SUCCESS);
    }
    let expires_ms = parse_duration(expires)
        .map_err(|e| format!("--expires: {e}"))?
        .as_secs_f64()
        * 1000.0;
    let items = call(Request::JoinCode { uses, expires_ms })?.unwrap_or_default();
    let made = items.first().ok_or("the daemon answered with nothing")?;
    let code = made["code"]
        .as_str()
        .ok_or("the daemon answered without a code")?;
    eprintln!(
        "A join code for {} machine(s), until {} (id {}). It is a secret: it holds this \
         network's key, so give it only to the new machine, and never paste it where others read. \
         Routes: {}. On the new machine:\n\n  scuttlefs join CODE --service\n",
        uses,
        made["expires"].as_str().unwrap_or("-"),
        made["id"].as_str().unwrap_or("-"),
        made["routes"]
            .as_array()
            .map(|r| r
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", "))
            .unwrap_or_default(),
    );
    println!("{code}");
    Ok(ExitCode::SUCCESS)
}

/// What `service` does.
#[derive(Subcommand)]
enum ServiceAction {
    /// Write, enable and start the service.
    Install {
        /// Where it mounts (default ~/scuttlefs).
        #[arg(long)]
        mount: Option<PathBuf>,
        /// Print what would be done, and do nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Stop, disable and remove it.
    Uninstall {
        /// Print what would be done, and do nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Whether it is installed and running.
    Status,
}

fn service_command(overrides: &Overrides, action: ServiceAction) -> Result<ExitCode, String> {
    use scuttlefs::service::{self, Manager, ServiceSpec};
    let binary = std::env::current_exe().map_err(|e| format!("finding this program: {e}"))?;
    let manager = Manager::here();
    let spec_for = |mount| {
        ServiceSpec::for_user(binary.clone(), overrides.path.clone(), mount)
            .map_err(|e| e.to_string())
    };
    match action {
        ServiceAction::Install { mount, dry_run } => {
            let spec = spec_for(mount)?;
            let plan = service::install_plan(&spec, manager);
            if dry_run {
                for step in &plan {
                    println!("{}", step.describe());
                }
                return Ok(ExitCode::SUCCESS);
            }
            service::carry_out(&plan, false).map_err(|e| e.to_string())?;
            println!(
                "installed and started: {} (mounted at {})",
                spec.file(manager).display(),
                spec.mount.display()
            );
            let user = std::env::var("USER").unwrap_or_default();
            if let Some(hint) = service::linger_hint(&user) {
                println!("{hint}");
            }
            Ok(ExitCode::SUCCESS)
        }
        ServiceAction::Uninstall { dry_run } => {
            let spec = spec_for(None)?;
            let plan = service::uninstall_plan(&spec, manager);
            if dry_run {
                for step in &plan {
                    println!("{}", step.describe());
                }
                return Ok(ExitCode::SUCCESS);
            }
            service::carry_out(&plan, true).map_err(|e| e.to_string())?;
            println!("removed {}", spec.file(manager).display());
            Ok(ExitCode::SUCCESS)
        }
        ServiceAction::Status => {
            print!("{}", service::status(&spec_for(None)?, manager));
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// A man page for `scuttlefs` and one for each command
/// (`scuttlefs-serve.1`, …), as clap_mangen renders them.
fn write_manpages(dir: &std::path::Path) -> Result<ExitCode, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let command = Cli::command();
    let mut pages = vec![(String::from("scuttlefs"), command.clone())];
    for sub in command.get_subcommands().filter(|c| !c.is_hide_set()) {
        let name = format!("scuttlefs-{}", sub.get_name());
        pages.push((name.clone(), sub.clone().name(name)));
    }
    for (name, page) in pages {
        let path = dir.join(format!("{name}.1"));
        let mut out = Vec::new();
        clap_mangen::Man::new(page)
            .render(&mut out)
            .map_err(|e| format!("rendering {name}: {e}"))?;
        std::fs::write(&path, out).map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn alert_command(overrides: &Overrides, action: AlertAction) -> Result<ExitCode, String> {
    let config = Config::load(overrides, false).map_err(|e| e.to_string())?;
    let dir = &config.path;
    match action {
        AlertAction::Add { url } => println!("{}", alert::command::add(dir, &url)?),
        AlertAction::List => {
            for target in alert::command::list(dir)? {
                println!("{target}");
            }
        }
        AlertAction::Remove { url } => println!("{}", alert::command::remove(dir, &url)?),
        AlertAction::Mute { what, duration } => {
            let lasting = parse_duration(&duration).map_err(|e| e.to_string())?;
            let (feed, source) = machine_and_job(&config, &what)?;
            let until = now_ms() + lasting.as_secs_f64() * 1000.0;
            let mut content = Map::new();
            content.insert("type".into(), MUTE_TYPE.into());
            content.insert("machine".into(), feed.to_string().into());
            content.insert(
                "source".into(),
                source.clone().map_or(Value::Null, Value::from),
            );
            content.insert("until".into(), Value::from(until.round() as i64));
            ask_daemon(
                &config,
                &Request::Publish {
                    contents: vec![Value::Object(content)],
                },
            )?
            .ok_or("alert mute needs the daemon: start it with scuttlefs serve")?;
            if lasting.is_zero() {
                println!("{what}: no longer muted");
            } else {
                println!("{what}: muted on every machine for {duration}");
            }
        }
        AlertAction::Test { url } => {
            let mut all_delivered = true;
            for (target, outcome) in alert::command::test(dir, &config.name, url.as_deref())? {
                match outcome {
                    Ok(()) => println!("delivered to {target}"),
                    Err(e) => {
                        all_delivered = false;
                        eprintln!("scuttlefs: not delivered to {target}: {e}");
                    }
                }
            }
            if !all_delivered {
                return Ok(ExitCode::from(1));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `MACHINE[/SOURCE]`: the machine's feed (by its name as the daemon
/// knows it, or its @id) and the job's source, if given.
fn machine_and_job(config: &Config, spec: &str) -> Result<(FeedId, Option<String>), String> {
    // An @id holds slashes of its own: it ends at ".ed25519".
    let (machine, source) = match spec.find(".ed25519") {
        Some(at) if spec.starts_with('@') => {
            let end = at + ".ed25519".len();
            (&spec[..end], spec[end..].strip_prefix('/'))
        }
        _ => match spec.split_once('/') {
            Some((machine, source)) => (machine, Some(source)),
            None => (spec, None),
        },
    };
    let source = source.filter(|s| !s.is_empty()).map(str::to_string);
    if machine.starts_with('@') {
        return Ok((FeedId::parse(machine).map_err(|e| e.to_string())?, source));
    }
    let status = ask_daemon(config, &Request::Status)?
        .ok_or("naming a machine needs the daemon (or give its @id)")?;
    let mut known = vec![(status["name"].clone(), status["id"].clone())];
    for feed in status["feeds"].as_array().into_iter().flatten() {
        known.push((feed["name"].clone(), feed["id"].clone()));
    }
    let ids: std::collections::BTreeSet<&str> = known
        .iter()
        .filter(|(name, _)| name.as_str() == Some(machine))
        .filter_map(|(_, id)| id.as_str())
        .collect();
    match ids.len() {
        0 => Err(format!(
            "no machine is named {machine:?} (see scuttlefs status)"
        )),
        1 => {
            let id = ids.into_iter().next().unwrap_or_default();
            Ok((FeedId::parse(id).map_err(|e| e.to_string())?, source))
        }
        _ => Err(format!(
            "{} machines are named {machine:?}: give the @id",
            ids.len()
        )),
    }
}

fn retire_job(overrides: &Overrides, job: &str) -> Result<ExitCode, String> {
    let config = Config::load(overrides, false).map_err(|e| e.to_string())?;
    let (feed, Some(source)) = machine_and_job(&config, job)? else {
        return Err("usage: scuttlefs job retire MACHINE/SOURCE".into());
    };
    let mut content = Map::new();
    content.insert("type".into(), RETIRE_TYPE.into());
    content.insert("machine".into(), feed.to_string().into());
    content.insert("source".into(), source.into());
    ask_daemon(
        &config,
        &Request::Publish {
            contents: vec![Value::Object(content)],
        },
    )?
    .ok_or("job retire needs the daemon: start it with scuttlefs serve")?;
    println!("{job}: retired on every machine, until it runs again");
    Ok(ExitCode::SUCCESS)
}

fn follow(overrides: &Overrides, id: &str, following: bool) -> Result<ExitCode, String> {
    let feed = FeedId::parse(id).map_err(|e| e.to_string())?;
    let mut content = Map::new();
    content.insert("type".into(), "contact".into());
    content.insert("contact".into(), feed.to_string().into());
    content.insert("following".into(), following.into());
    request(
        overrides,
        Request::Publish {
            contents: vec![Value::Object(content)],
        },
    )
}

/// Every line of standard input, without its line ending. Fails, naming
/// the line, if any line is not UTF-8.
fn read_stdin_lines() -> Result<Vec<String>, String> {
    let mut lines = Vec::new();
    let stdin = std::io::stdin();
    let mut reader = stdin.lock();
    let mut raw = Vec::new();
    loop {
        raw.clear();
        let n = reader
            .read_until(b'\n', &mut raw)
            .map_err(|e| format!("reading standard input: {e}"))?;
        if n == 0 {
            break;
        }
        let line = std::str::from_utf8(&raw).map_err(|_| {
            format!(
                "line {} is not valid UTF-8; nothing was published",
                lines.len() + 1
            )
        })?;
        let line = line.strip_suffix('\n').unwrap_or(line);
        let line = line.strip_suffix('\r').unwrap_or(line);
        lines.push(line.to_string());
    }
    Ok(lines)
}

/// Runs `req` through the daemon if one is running, else on the store
/// directly, printing each result as pretty JSON.
fn request(overrides: &Overrides, req: Request) -> Result<ExitCode, String> {
    let config = Config::load(overrides, false).map_err(|e| e.to_string())?;
    let blank_line = matches!(req, Request::Log);
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let outcome = {
        let mut emit = |item: Value| -> std::io::Result<()> {
            match &item {
                // An invite code: bare, to paste or pass on as it is.
                Value::String(text) => out.write_all(text.as_bytes())?,
                _ => out.write_all(to_js_pretty(&item).as_bytes())?,
            }
            // `sbot log` separates messages with a blank line; scripts split on it.
            out.write_all(if blank_line { b"\n\n" } else { b"\n" })
        };
        match control::call(&config.socket_path(), &req, &mut emit) {
            Ok(Some(outcome)) => outcome,
            Ok(None) => run_locally(&config, req, &mut emit)?,
            Err(e) => return Err(format!("talking to the daemon: {e}")),
        }
    };
    out.flush().map_err(|e| e.to_string())?;
    outcome.map_err(|e: RequestError| e.message)?;
    Ok(ExitCode::SUCCESS)
}

fn run_locally(
    config: &Config,
    req: Request,
    emit: &mut dyn FnMut(Value) -> std::io::Result<()>,
) -> Result<Result<(), RequestError>, String> {
    let keys = config.load_or_create_keys().map_err(|e| e.to_string())?;
    let node = match Node::open(config.clone(), keys, false) {
        Ok(node) => node,
        Err(NodeError::Store(StoreError::Locked(_))) => {
            return Err(format!(
                "the store in {} is held by {}, and no daemon answers on {}",
                config.path.display(),
                scuttlefs::store::holder(&config.store_dir()),
                config.socket_path().display()
            ))
        }
        Err(e) => return Err(e.to_string()),
    };
    if matches!(
        req,
        Request::Publish { .. } | Request::PublishLines { .. } | Request::InviteAccept { .. }
    ) {
        // Name the machine before its first line, as the daemon does at start.
        node.ensure_name(&config.name).map_err(|e| e.to_string())?;
    }
    let node = std::sync::Arc::new(node);
    let net = scuttlefs::net::Net::open(&node);
    Ok(control::handle(&node, &net, req, emit))
}

/// `scuttlefs run`: through the daemon when one answers, else on the store
/// directly (held for the whole run).
/// How long `run` waits for a daemon that holds the store but does not
/// answer yet (one that is starting).
const DAEMON_START_WAIT: Duration = Duration::from_secs(30);

fn run_job(overrides: &Overrides, args: &[std::ffi::OsString]) -> Result<ExitCode, String> {
    let spec = run::parse_args(args).map_err(|e| e.to_string())?;
    let config = Config::load(overrides, false).map_err(|e| e.to_string())?;
    let socket = config.socket_path();
    let daemon_runs = std::os::unix::net::UnixStream::connect(&socket).is_ok();
    let code = if daemon_runs {
        run::run(&spec, &mut Via(DaemonPublisher { socket }))
    } else {
        let keys = config.load_or_create_keys().map_err(|e| e.to_string())?;
        let node = match Node::open(config.clone(), keys, false) {
            Ok(node) => node,
            Err(NodeError::Store(StoreError::Locked(_))) => {
                // A daemon holds the store but does not answer yet: it is
                // starting (a job started at boot, beside it). The job
                // runs regardless; its lines go to the daemon once it
                // answers.
                let answers = || std::os::unix::net::UnixStream::connect(&socket).is_ok();
                let deadline = std::time::Instant::now() + DAEMON_START_WAIT;
                while !answers() && std::time::Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(100));
                }
                if !answers() {
                    eprintln!(
                        "scuttlefs run: the store in {} is held by {}, and no daemon answers \
                         on {}; running the job, its lines may not be published",
                        config.path.display(),
                        scuttlefs::store::holder(&config.store_dir()),
                        socket.display()
                    );
                }
                let code = run::run(&spec, &mut Via(DaemonPublisher { socket }));
                return Ok(ExitCode::from(code.clamp(0, 255) as u8));
            }
            Err(e) => return Err(e.to_string()),
        };
        node.ensure_name(&config.name).map_err(|e| e.to_string())?;
        let node = std::sync::Arc::new(node);
        let net = scuttlefs::net::Net::open(&node);
        run::run(&spec, &mut Via(LocalPublisher { node, net }))
    };
    Ok(ExitCode::from(code.clamp(0, 255) as u8))
}

/// Where a run's requests go: the daemon's control socket, or the store.
trait Handles {
    fn handle(&self, req: Request) -> Result<(), String>;
}

/// Publishes a run's lines through the daemon's control socket.
struct DaemonPublisher {
    socket: PathBuf,
}

impl Handles for DaemonPublisher {
    fn handle(&self, req: Request) -> Result<(), String> {
        match control::call(&self.socket, &req, &mut |_| Ok(())) {
            Ok(Some(Ok(()))) => Ok(()),
            Ok(Some(Err(e))) => Err(e.message),
            Ok(None) => Err("the daemon stopped".into()),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// Publishes a run's lines on the store directly (no daemon runs).
struct LocalPublisher {
    node: std::sync::Arc<Node>,
    net: std::sync::Arc<scuttlefs::net::Net>,
}

impl Handles for LocalPublisher {
    fn handle(&self, req: Request) -> Result<(), String> {
        control::handle(&self.node, &self.net, req, &mut |_| Ok(())).map_err(|e| e.message)
    }
}

/// A run's publisher over either.
struct Via<T>(T);

impl<T: Handles> run::Publisher for Via<T> {
    fn lines(&mut self, fields: &Map<String, Value>, lines: Vec<String>) -> Result<(), String> {
        self.0.handle(Request::PublishLines {
            fields: fields.clone(),
            lines,
        })
    }

    fn message(&mut self, content: Value) -> Result<(), String> {
        self.0.handle(Request::Publish {
            contents: vec![content],
        })
    }
}

/// The daemon's one answer to `req`. `Ok(None)`, having said so, when no
/// daemon answers; a daemon's refusal is reported as what it is.
fn ask_daemon(config: &Config, req: &Request) -> Result<Option<Value>, String> {
    let mut answer = None;
    let outcome = control::call(&config.socket_path(), req, &mut |item| {
        answer = Some(item);
        Ok(())
    });
    match outcome {
        Ok(None) => {
            eprintln!(
                "scuttlefs: no daemon is running for {} (start it with: scuttlefs serve --path {})",
                config.path.display(),
                config.path.display()
            );
            Ok(None)
        }
        Ok(Some(Ok(()))) => answer
            .map(Some)
            .ok_or_else(|| "the daemon answered with nothing".to_string()),
        Ok(Some(Err(refused))) => Err(format!("the daemon refused: {}", refused.message)),
        Err(e) => Err(format!("talking to the daemon: {e}")),
    }
}

fn health_command(
    overrides: &Overrides,
    max_silence: Option<String>,
    json: bool,
) -> Result<ExitCode, String> {
    let max_silence_ms = max_silence
        .map(|s| parse_duration(&s))
        .transpose()
        .map_err(|e| e.to_string())?
        .map(|d| d.as_secs_f64() * 1000.0);
    let config = Config::load(overrides, false).map_err(|e| e.to_string())?;
    let Some(report) = ask_daemon(
        &config,
        &Request::Health {
            max_silence_ms,
            json,
        },
    )?
    else {
        return Ok(ExitCode::from(1));
    };
    if json {
        println!("{}", to_js_pretty(&report));
    } else {
        print!("{}", report["text"].as_str().unwrap_or_default());
    }
    Ok(if report["healthy"] == Value::Bool(true) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    })
}

fn status_command(
    overrides: &Overrides,
    max_silence: Option<String>,
    json: bool,
) -> Result<ExitCode, String> {
    let max_silence = max_silence
        .map(|s| parse_duration(&s))
        .transpose()
        .map_err(|e| e.to_string())?;
    let config = Config::load(overrides, false).map_err(|e| e.to_string())?;
    let Some(report) = ask_daemon(&config, &Request::Status)? else {
        return Ok(ExitCode::from(1));
    };
    if json {
        println!("{}", to_js_pretty(&report));
    } else {
        print!("{}", status::render(&report));
    }
    if let Some(limit) = max_silence {
        let last = report["last_peer_ms"]
            .as_f64()
            .or_else(|| report["started_ms"].as_f64())
            .unwrap_or(0.0);
        let silent_s = (now_ms() - last) / 1000.0;
        if silent_s > limit.as_secs_f64() {
            eprintln!(
                "scuttlefs: no peer for {silent_s:.0} s (limit {})",
                humantime::format_duration(limit)
            );
            return Ok(ExitCode::from(2));
        }
    }
    Ok(ExitCode::SUCCESS)
}
