//! Command-line parsing that sbot users expect: `--path`, `--port` and
//! `--caps.shs` anywhere on the line, and free-form `publish` flags that
//! become content fields.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use serde_json::{Map, Value};

use crate::config::Overrides;

/// Why the command line cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A global option without its value.
    #[error("{0} needs a value")]
    MissingValue(String),
    /// An argument that is not UTF-8 where only text makes sense.
    #[error("argument {0:?} is not valid UTF-8 (only a job's command, after --, and --path may be other bytes)")]
    NotUtf8(String),
    /// `--port` that is not a port number.
    #[error("--port {0:?} is not a port number")]
    BadPort(String),
    /// A bare word among `publish`'s flags.
    #[error(
        "unexpected argument {0:?}: publish takes --key value pairs (e.g. --type log --text \"…\")"
    )]
    Positional(String),
}

/// Removes the global options from `args` (wherever they stand before a
/// `--`) and returns them with what is left. Everything from `--` on
/// belongs to a job's command and is passed on untouched: `scuttlefs run
/// -- pg_dump --port 5433` must not change this node's port.
///
/// Arguments before `--` must be UTF-8, except the value of `--path`,
/// which is a path.
pub fn split_globals(args: &[OsString]) -> Result<(Overrides, Vec<OsString>), CliError> {
    let mut overrides = Overrides::default();
    let mut rest = Vec::with_capacity(args.len());
    let mut i = 0;
    while i < args.len() {
        let raw = &args[i];
        if raw == "--" {
            rest.extend_from_slice(&args[i..]);
            break;
        }
        let Some(arg) = raw.to_str() else {
            // A path given as `--path=<bytes>` is the one non-UTF-8 global.
            if let Some(path) = raw.as_bytes().strip_prefix(b"--path=") {
                overrides.path = Some(PathBuf::from(OsStr::from_bytes(path)));
                i += 1;
                continue;
            }
            return Err(CliError::NotUtf8(raw.to_string_lossy().into_owned()));
        };
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n, Some(OsString::from(v))),
            _ => (arg, None),
        };
        if !matches!(name, "--path" | "--port" | "--caps.shs") {
            rest.push(raw.clone());
            i += 1;
            continue;
        }
        let value = match inline {
            Some(v) => v,
            None => {
                i += 1;
                args.get(i)
                    .filter(|v| *v != "--")
                    .cloned()
                    .ok_or_else(|| CliError::MissingValue(name.to_string()))?
            }
        };
        if name == "--path" {
            overrides.path = Some(expand_tilde(value));
        } else {
            let text = value
                .into_string()
                .map_err(|v| CliError::NotUtf8(v.to_string_lossy().into_owned()))?;
            if name == "--port" {
                overrides.port = Some(text.parse().map_err(|_| CliError::BadPort(text))?);
            } else {
                overrides.network_key = Some(text);
            }
        }
        i += 1;
    }
    Ok((overrides, rest))
}

/// Whether `arg` names a flag (`--name` or `--name=value`), rather than
/// being a value that happens to begin with dashes, such as duplicity's
/// `--- Errors 0 ---` or `-- done --`.
pub fn is_flag(arg: &str) -> bool {
    let Some(rest) = arg.strip_prefix("--") else {
        return false;
    };
    let name = rest.split('=').next().unwrap_or_default();
    name.chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric())
        && !name.chars().any(char::is_whitespace)
}

/// `~/x` → `$HOME/x`, for paths quoted so that the shell did not expand them
/// (the seed's own script passes `'~/ssb'`).
fn expand_tilde(path: OsString) -> PathBuf {
    match (
        path.as_bytes().strip_prefix(b"~/"),
        std::env::var_os("HOME"),
    ) {
        (Some(rest), Some(home)) => PathBuf::from(home).join(OsStr::from_bytes(rest)),
        _ => PathBuf::from(path),
    }
}

/// `publish`'s flags as content: `--key value` is a string field, a flag
/// without a value is `true`. Returns the content and whether `--stdin` was
/// given.
pub fn publish_content(args: &[String]) -> Result<(Map<String, Value>, bool), CliError> {
    let mut content = Map::new();
    let mut stdin = false;
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        let Some(flag) = arg.strip_prefix("--") else {
            return Err(CliError::Positional(arg.clone()));
        };
        if flag == "stdin" {
            stdin = true;
            i += 1;
            continue;
        }
        if let Some((key, value)) = flag.split_once('=') {
            content.insert(key.to_string(), Value::String(value.to_string()));
            i += 1;
            continue;
        }
        match args.get(i + 1) {
            Some(next) if !is_flag(next) => {
                content.insert(flag.to_string(), Value::String(next.clone()));
                i += 2;
            }
            _ => {
                content.insert(flag.to_string(), Value::Bool(true));
                i += 1;
            }
        }
    }
    Ok((content, stdin))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &[&str]) -> Vec<String> {
        s.iter().map(|a| a.to_string()).collect()
    }

    fn os_args(s: &[&str]) -> Vec<OsString> {
        s.iter().map(OsString::from).collect()
    }

    #[test]
    fn globals_are_found_before_and_after_the_verb() {
        let (o, rest) = split_globals(&os_args(&[
            "--path",
            "/d",
            "publish",
            "--port",
            "8321",
            "--caps.shs=K",
            "--type",
            "log",
        ]))
        .expect("parses");
        assert_eq!(o.path.as_deref(), Some(std::path::Path::new("/d")));
        assert_eq!(o.port, Some(8321));
        assert_eq!(o.network_key.as_deref(), Some("K"));
        assert_eq!(rest, os_args(&["publish", "--type", "log"]));
    }

    #[test]
    fn everything_after_a_double_dash_belongs_to_the_job() {
        let line = os_args(&[
            "run",
            "--path",
            "/d",
            "--source",
            "db",
            "--",
            "pg_dump",
            "--port",
            "5433",
            "--path",
            "/etc",
            "--caps.shs",
            "x",
            "--",
        ]);
        let (o, rest) = split_globals(&line).expect("parses");
        assert_eq!(o.path.as_deref(), Some(std::path::Path::new("/d")));
        assert_eq!(o.port, None);
        assert_eq!(o.network_key, None);
        assert_eq!(
            rest,
            os_args(&[
                "run",
                "--source",
                "db",
                "--",
                "pg_dump",
                "--port",
                "5433",
                "--path",
                "/etc",
                "--caps.shs",
                "x",
                "--"
            ])
        );
        // A global's value is never the `--` itself.
        assert!(matches!(
            split_globals(&os_args(&["run", "--port", "--", "x"])),
            Err(CliError::MissingValue(_))
        ));
    }

    #[test]
    fn non_utf8_arguments_are_refused_before_the_double_dash_and_kept_after() {
        let latin1 = OsString::from(OsStr::from_bytes(b"caf\xe9.tar"));
        let line = vec![
            OsString::from("run"),
            OsString::from("--"),
            OsString::from("tar"),
            latin1.clone(),
        ];
        let (_, rest) = split_globals(&line).expect("parses");
        assert_eq!(rest[3], latin1);
        let bad = vec![OsString::from("publish"), latin1.clone()];
        assert!(matches!(split_globals(&bad), Err(CliError::NotUtf8(_))));
        let mut path = OsString::from("--path=/tmp/");
        path.push(&latin1);
        let (o, _) = split_globals(&[path, OsString::from("whoami")]).expect("a path may be bytes");
        assert!(o
            .path
            .expect("path")
            .as_os_str()
            .as_bytes()
            .ends_with(b"\xe9.tar"));
    }

    #[test]
    fn values_that_begin_with_dashes_are_values() {
        let (content, _) = publish_content(&args(&[
            "--type",
            "log",
            "--text",
            "--- Errors 0 ---",
            "--note",
            "-- done --",
            "--flag",
            "--other=a b",
        ]))
        .expect("parses");
        assert_eq!(content["text"], "--- Errors 0 ---");
        assert_eq!(content["note"], "-- done --");
        assert_eq!(content["flag"], true);
        assert_eq!(content["other"], "a b");
        assert!(is_flag("--source") && is_flag("--caps.shs=x") && is_flag("--x=a b"));
        assert!(!is_flag("---") && !is_flag("--") && !is_flag("-x") && !is_flag("--a b"));
    }

    #[test]
    fn the_seeds_publish_flags_become_content() {
        let (content, stdin) = publish_content(&args(&[
            "--type",
            "contact",
            "--contact",
            "@x",
            "--following",
            "--text",
            " hi",
        ]))
        .expect("parses");
        assert!(!stdin);
        assert_eq!(
            serde_json::to_string(&content).expect("json"),
            r#"{"type":"contact","contact":"@x","following":true,"text":" hi"}"#
        );
        assert!(publish_content(&args(&["stray"])).is_err());
    }
}
