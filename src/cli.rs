//! Command-line parsing that sbot users expect: `--path`, `--port` and
//! `--caps.shs` anywhere on the line, and free-form `publish` flags that
//! become content fields.

use std::time::Duration;

use serde_json::{Map, Value};

use crate::config::Overrides;

/// Why the command line cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A global option without its value.
    #[error("{0} needs a value")]
    MissingValue(String),
    /// `--port` that is not a port number.
    #[error("--port {0:?} is not a port number")]
    BadPort(String),
    /// A bare word among `publish`'s flags.
    #[error(
        "unexpected argument {0:?}: publish takes --key value pairs (e.g. --type log --text \"…\")"
    )]
    Positional(String),
    /// A duration that does not parse, or is too long to represent.
    #[error("bad duration {text:?}: {reason} (use e.g. 90s, 30m, 1h, 2d, or plain seconds)")]
    BadDuration {
        /// What was given.
        text: String,
        /// Why it cannot be used.
        reason: String,
    },
}

/// Removes the global options from `args` (wherever they stand) and returns
/// them with what is left.
pub fn split_globals(args: &[String]) -> Result<(Overrides, Vec<String>), CliError> {
    let mut overrides = Overrides::default();
    let mut rest = Vec::with_capacity(args.len());
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n, Some(v.to_string())),
            _ => (arg.as_str(), None),
        };
        if !matches!(name, "--path" | "--port" | "--caps.shs") {
            rest.push(arg.clone());
            i += 1;
            continue;
        }
        let value = match inline {
            Some(v) => v,
            None => {
                i += 1;
                args.get(i)
                    .cloned()
                    .ok_or_else(|| CliError::MissingValue(name.to_string()))?
            }
        };
        match name {
            "--path" => overrides.path = Some(expand_tilde(&value).into()),
            "--port" => overrides.port = Some(value.parse().map_err(|_| CliError::BadPort(value))?),
            _ => overrides.network_key = Some(value),
        }
        i += 1;
    }
    Ok((overrides, rest))
}

/// `~/x` → `$HOME/x`, for paths quoted so that the shell did not expand them
/// (the seed's own script passes `'~/ssb'`).
fn expand_tilde(path: &str) -> String {
    match (path.strip_prefix("~/"), std::env::var("HOME")) {
        (Some(rest), Ok(home)) => format!("{home}/{rest}"),
        _ => path.to_string(),
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
            Some(next) if !next.starts_with("--") => {
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

/// Parses a duration as humantime does (`90s`, `30m`, `1h 30m`, `2days`),
/// or plain seconds (`90`). A duration too long to represent is refused,
/// not wrapped around.
pub fn parse_duration(text: &str) -> Result<Duration, CliError> {
    let bad = |reason: String| CliError::BadDuration {
        text: text.to_string(),
        reason,
    };
    let trimmed = text.trim();
    if !trimmed.is_empty() && trimmed.bytes().all(|b| b.is_ascii_digit()) {
        // Only digits, so the one way to fail is not fitting in a u64.
        return trimmed
            .parse()
            .map(Duration::from_secs)
            .map_err(|_| bad("number is too large".into()));
    }
    humantime::parse_duration(trimmed).map_err(|e| bad(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &[&str]) -> Vec<String> {
        s.iter().map(|a| a.to_string()).collect()
    }

    #[test]
    fn globals_are_found_before_and_after_the_verb() {
        let (o, rest) = split_globals(&args(&[
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
        assert_eq!(rest, args(&["publish", "--type", "log"]));
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

    #[test]
    fn durations() {
        let secs = |text| parse_duration(text).map(|d| d.as_secs()).ok();
        assert_eq!(secs("1h"), Some(3600));
        assert_eq!(secs("90"), Some(90));
        assert_eq!(secs(" 90s "), Some(90));
        assert_eq!(secs("1h 30m"), Some(5400));
        assert_eq!(secs("2d"), Some(172_800));
        assert_eq!(
            parse_duration("500ms").expect("ok"),
            Duration::from_millis(500)
        );
        for bad in ["", "1fortnight", "-5s", "s", "1.5.h"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn durations_too_long_are_refused_not_wrapped() {
        // 307445734561825861 minutes is 2^64 + 44 seconds: it used to wrap
        // around to 44 s.
        for text in [
            "307445734561825861m",
            "18446744073709551616",
            "99999999999999999999s",
            "584942417356y",
        ] {
            match parse_duration(text) {
                Err(CliError::BadDuration { reason, .. }) => {
                    assert!(reason.contains("too large"), "{text}: {reason}")
                }
                other => panic!("{text} gave {other:?}"),
            }
        }
        let max = u64::MAX.to_string();
        assert_eq!(
            parse_duration(&max).expect("fits").as_secs(),
            u64::MAX,
            "the largest plain number still fits"
        );
    }
}
