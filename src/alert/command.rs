//! `scuttlefs alert add|list|remove|test`: the targets live in
//! `<path>/config` (0600), which a running daemon reads every second, so a
//! change takes effect at once without talking to it.

use std::path::Path;

use super::target::Target;
use super::Alert;

/// Adds `url` to the targets; returns what to tell the person.
pub fn add(dir: &Path, url: &str) -> Result<String, String> {
    let target = Target::parse(url).map_err(|e| e.to_string())?;
    let mut urls = crate::config::alert_targets(dir).map_err(|e| e.to_string())?;
    if urls
        .iter()
        .any(|u| Target::parse(u).ok().as_ref() == Some(&target))
    {
        return Ok(format!("{target} is already a target"));
    }
    urls.push(target.url());
    crate::config::set_alert_targets(dir, urls).map_err(|e| e.to_string())?;
    Ok(format!(
        "added {target}; `scuttlefs alert test` sends it a test alert"
    ))
}

/// The targets, credentials masked.
pub fn list(dir: &Path) -> Result<Vec<String>, String> {
    let urls = crate::config::alert_targets(dir).map_err(|e| e.to_string())?;
    Ok(urls
        .iter()
        .map(|u| Target::parse(u).map_or_else(|e| format!("{u} (not used: {e})"), |t| t.masked()))
        .collect())
}

/// Removes `url` (as added, or as `alert list` shows it).
pub fn remove(dir: &Path, url: &str) -> Result<String, String> {
    let mut urls = crate::config::alert_targets(dir).map_err(|e| e.to_string())?;
    let before = urls.len();
    urls.retain(|u| {
        let masked = Target::parse(u).map(|t| t.masked()).ok();
        u != url && masked.as_deref() != Some(url)
    });
    if urls.len() == before {
        return Err(format!(
            "{url} is not a target (see `scuttlefs alert list`)"
        ));
    }
    crate::config::set_alert_targets(dir, urls).map_err(|e| e.to_string())?;
    Ok(format!("removed {url}"))
}

/// How one delivery went: the target, masked, and why it failed if it did.
pub type Delivery = (String, Result<(), String>);

/// Sends a test alert from `machine` to `url`, or to every configured
/// target.
pub fn test(dir: &Path, machine: &str, url: Option<&str>) -> Result<Vec<Delivery>, String> {
    let targets = match url {
        Some(url) => vec![Target::parse(url).map_err(|e| e.to_string())?],
        None => {
            let targets = super::configured_targets(dir, &mut Vec::new());
            if targets.is_empty() {
                return Err(
                    "no alert targets: add one with `scuttlefs alert add URL`, or give one \
                     to `alert test`"
                        .into(),
                );
            }
            targets
        }
    };
    let alert = Alert::test(machine, crate::clock::now_ms());
    Ok(targets
        .iter()
        .map(|t| (t.masked(), super::deliver(t, &alert)))
        .collect())
}
