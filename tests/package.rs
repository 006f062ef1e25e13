//! Packaging and the service: the Debian package that `scripts/deb` builds
//! with cargo-deb, unpacked with dpkg-deb and used as a person would (the
//! binary runs, every man page renders, the bash completion registers);
//! and the unit `scuttlefs service install` writes, checked by
//! `systemd-analyze verify`, with its dry run.

mod common;

use std::path::Path;
use std::process::Command;

use common::{bin, repo, system_available};

fn have(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

fn text(output: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn the_debian_package_holds_a_working_binary_man_pages_and_completions() {
    if !system_available("cargo-deb", have("cargo", &["deb", "--version"]))
        || !system_available(
            "dpkg-deb and man",
            have("dpkg-deb", &["--version"]) && have("man", &["--version"]),
        )
    {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let deb = dir.path().join("scuttlefs.deb");
    let built = Command::new(repo().join("scripts/deb"))
        .arg("--binary")
        .arg(bin())
        .arg("--output")
        .arg(&deb)
        .output()
        .expect("scripts/deb runs");
    assert!(built.status.success(), "{}", text(&built));

    let info = Command::new("dpkg-deb")
        .arg("--info")
        .arg(&deb)
        .output()
        .expect("dpkg-deb runs");
    let info = text(&info);
    assert!(info.contains("Package: scuttlefs"), "{info}");
    assert!(info.contains("fuse3"), "depends on fuse3: {info}");

    let root = dir.path().join("root");
    let unpacked = Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(&root)
        .output()
        .expect("runs");
    assert!(unpacked.status.success(), "{}", text(&unpacked));

    // The binary runs.
    let binary = root.join("usr/bin/scuttlefs");
    let version = Command::new(&binary)
        .arg("--version")
        .output()
        .expect("the binary runs");
    assert!(version.status.success());
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("scuttlefs {}", env!("CARGO_PKG_VERSION"))
    );

    // A man page for scuttlefs and each command, each rendering.
    let man = root.join("usr/share/man/man1");
    let mut pages: Vec<String> = std::fs::read_dir(&man)
        .expect("man pages")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    pages.sort();
    for command in [
        "scuttlefs.1",
        "scuttlefs-serve.1",
        "scuttlefs-run.1",
        "scuttlefs-health.1",
        "scuttlefs-log.1",
        "scuttlefs-service.1",
    ] {
        assert!(
            pages.iter().any(|p| p.starts_with(command)),
            "no {command} in {pages:?}"
        );
    }
    for page in &pages {
        let rendered = Command::new("man")
            .arg("-l")
            .arg(man.join(page))
            .env("MANPAGER", "cat")
            .env("PAGER", "cat")
            .output()
            .expect("man runs");
        let shown = String::from_utf8_lossy(&rendered.stdout);
        assert!(rendered.status.success(), "{page}: {}", text(&rendered));
        assert!(
            shown.contains("NAME") && shown.contains("SYNOPSIS"),
            "{page}: {shown}"
        );
    }
    let serve = Command::new("man")
        .arg("-l")
        .arg(
            man.join(
                pages
                    .iter()
                    .find(|p| p.starts_with("scuttlefs-serve"))
                    .expect("serve"),
            ),
        )
        .env("MANPAGER", "cat")
        .output()
        .expect("man runs");
    assert!(String::from_utf8_lossy(&serve.stdout).contains("--http"));

    // The bash completion registers, and completes a command.
    let completion = root.join("usr/share/bash-completion/completions/scuttlefs");
    let script = format!(
        "source '{}' && complete -p scuttlefs && COMP_WORDS=(scuttlefs ser) COMP_CWORD=1 COMP_LINE='scuttlefs ser' COMP_POINT=13 && _scuttlefs scuttlefs ser scuttlefs && echo \"${{COMPREPLY[@]}}\"",
        completion.display()
    );
    let registered = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .output()
        .expect("bash runs");
    let said = text(&registered);
    assert!(registered.status.success(), "{said}");
    assert!(said.contains("-F _scuttlefs scuttlefs"), "{said}");
    assert!(said.contains("serve") && said.contains("service"), "{said}");
    for other in [
        "usr/share/zsh/vendor-completions/_scuttlefs",
        "usr/share/fish/vendor_completions.d/scuttlefs.fish",
    ] {
        assert!(root.join(other).exists(), "{other}");
    }

    // The units it ships.
    assert!(root.join("usr/lib/systemd/user/scuttlefs.service").exists());
    assert!(root
        .join("usr/lib/systemd/system/scuttlefs-system.service")
        .exists());
    assert!(root.join("usr/share/doc/scuttlefs/README.md").exists());
}

#[test]
fn completions_print_for_every_shell() {
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(bin())
            .args(["completions", shell])
            .output()
            .expect("runs");
        assert!(out.status.success(), "{shell}");
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(
            script.contains("serve") && script.contains("health"),
            "{shell}: {script}"
        );
    }
    let bad = Command::new(bin())
        .args(["completions", "tcsh"])
        .output()
        .expect("runs");
    assert!(!bad.status.success());
}

#[test]
fn service_install_writes_a_unit_systemd_accepts_and_its_dry_run_says_so() {
    let have_systemd = have("systemd-analyze", &["--version"]);
    if !system_available("systemd-analyze", have_systemd) {
        return;
    }
    let home = tempfile::tempdir().expect("home");
    let run = |args: &[&str]| {
        Command::new(bin())
            .args(args)
            .env("HOME", home.path())
            .env_remove("XDG_CONFIG_HOME")
            .output()
            .expect("runs")
    };
    let dry = run(&["service", "install", "--dry-run"]);
    assert!(dry.status.success(), "{}", text(&dry));
    let plan = String::from_utf8_lossy(&dry.stdout).to_string();
    let unit_path = home.path().join(".config/systemd/user/scuttlefs.service");
    let mount = home.path().join("scuttlefs");
    let expected_start = format!(
        "ExecStart={} serve --path {} --mount {}",
        bin().display(),
        home.path().join(".scuttlefs").display(),
        mount.display()
    );
    let lines: Vec<&str> = plan.lines().collect();
    assert_eq!(lines[0], format!("mkdir -p {}", mount.display()));
    assert_eq!(
        lines[1],
        format!("mkdir -p {}", unit_path.parent().expect("dir").display())
    );
    assert_eq!(lines[2], format!("write {}:", unit_path.display()));
    assert!(plan.contains(&expected_start), "{plan}");
    assert_eq!(lines[lines.len() - 2], "systemctl --user daemon-reload");
    assert_eq!(
        lines[lines.len() - 1],
        "systemctl --user enable --now scuttlefs.service"
    );
    // A dry run does nothing.
    assert!(!unit_path.exists() && !mount.exists());

    // The unit itself, as install writes it, passes systemd-analyze verify.
    let unit: String = plan
        .lines()
        .skip(3)
        .take_while(|l| l.starts_with("    ") || l.is_empty())
        .map(|l| format!("{}\n", l.strip_prefix("    ").unwrap_or(l)))
        .collect();
    assert!(unit.contains(&expected_start), "{unit}");
    let checked = home.path().join("scuttlefs.service");
    std::fs::write(&checked, &unit).expect("writes");
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&checked)
        .output()
        .expect("systemd-analyze runs");
    let said = text(&verify);
    assert!(verify.status.success(), "{said}\n{unit}");
    assert!(
        !said.contains("scuttlefs.service:"),
        "warnings about the unit: {said}"
    );

    let undo = run(&["service", "uninstall", "--dry-run"]);
    assert_eq!(
        String::from_utf8_lossy(&undo.stdout),
        format!(
            "systemctl --user disable --now scuttlefs.service\nrm -f {}\nsystemctl --user daemon-reload\n",
            unit_path.display()
        )
    );
    assert!(Path::new(&bin()).exists());
}
