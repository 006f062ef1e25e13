//! The status page (`serve --http`) as a person and as tools see it: in a
//! real browser (Debian's headless chromium through WebDriver), scraped by
//! a real Prometheus, and over plain HTTP for `/api/health`, badges and
//! the token.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{browser, fuse_available, job, run, run_ok, system_available, wait_until, Daemon};
use serde_json::Value;

/// An HTTP answer: status, headers, body.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn get(url: &str, headers: &[(&str, &str)]) -> Answer {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    let mut request = agent.get(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let mut response = request.call().unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let headers = response
        .headers()
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    Answer {
        status: response.status().as_u16(),
        headers,
        body: response
            .body_mut()
            .read_to_string()
            .unwrap_or_else(|e| panic!("GET {url}: {e}")),
    }
}

/// A helper process, killed when the test ends however it ends.
struct Helper(Child);

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const KEY: &str = "U3RhdHVzLXBhZ2Utd2l0aC1hLWJyb3dzZXItdGVzdCE=";

/// Two machines that follow each other: the page is `here`'s, the jobs
/// run on `there` too.
fn two_machines(dir: &Path) -> (Daemon, Daemon) {
    let here = Daemon::start(&dir.join("here"), "here", &["--caps.shs", KEY]);
    let there = Daemon::start(
        &dir.join("there"),
        "there",
        &["--caps.shs", KEY, "--peer", &here.loopback_address()],
    );
    for (a, b) in [(&here, &there), (&there, &here)] {
        assert!(a
            .sh(&format!("echo '{}' >> follow", b.id()))
            .status
            .success());
    }
    (here, there)
}

fn artifact(name: &str) -> PathBuf {
    common::repo()
        .join("target")
        .join("test-artifacts")
        .join(name)
}

#[test]
fn the_page_shows_another_machines_failure_live_and_runs_nothing_it_was_sent() {
    if !system_available("FUSE", fuse_available())
        || !system_available("chromium and chromium-driver", browser::available())
    {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (here, there) = two_machines(dir.path());
    let there_path = there.path.to_str().expect("utf8");
    assert_eq!(
        job(
            there_path,
            "backup-home",
            "echo rsync: connection refused; exit 23"
        ),
        23
    );
    assert_eq!(job(there_path, "certbot", "echo renewed"), 0);
    // A line built to run script if it were ever taken for markup.
    let hostile = "<img src=x onerror=window.pwned=1><script>window.pwned=2</script>";
    assert_eq!(
        job(
            there_path,
            "hostile",
            &format!("printf '%s\\n' '{hostile}'")
        ),
        0
    );
    let page = format!("http://{}/", here.http());
    assert!(
        wait_until(Duration::from_secs(30), || get(&page, &[])
            .body
            .contains("hostile")),
        "the jobs never reached here: {}",
        here.read("health")
    );

    let browser = browser::Browser::start(1280, 900);
    browser.open(&page);
    let jobs = browser.text("table.jobs");
    assert!(
        jobs.contains("failed") && jobs.contains("there") && jobs.contains("backup-home"),
        "{jobs}"
    );
    let failed_row = browser.text("tr.r-failed");
    assert!(
        failed_row.contains("backup-home") && failed_row.contains("23"),
        "{failed_row}"
    );
    assert!(
        failed_row.contains("rsync: connection refused"),
        "{failed_row}"
    );
    // Worst first, as mount/health orders them.
    assert!(jobs.find("backup-home") < jobs.find("certbot"), "{jobs}");
    // The hostile line is on the page as text, and ran nothing.
    assert!(jobs.contains(hostile), "{jobs}");
    assert_eq!(
        browser.eval("return window.pwned === undefined;"),
        Value::Bool(true)
    );
    assert_eq!(
        browser.eval("return document.querySelectorAll('#live script, #live img').length;"),
        serde_json::json!(0)
    );
    browser.screenshot(&artifact("status-page.png"));

    // A new failure shows without a reload.
    browser.eval("window.notReloaded = true; return 1;");
    let ended = Instant::now();
    assert_eq!(
        job(there_path, "db-dump", "echo pg_dump: out of disk; exit 2"),
        2
    );
    let job_ended = ended.elapsed();
    let failed_rows = "return Array.from(document.querySelectorAll('#live tr.r-failed')).map(r => r.innerText).join('\\n');";
    let seen = wait_until(Duration::from_secs(10), || {
        browser
            .eval(failed_rows)
            .as_str()
            .unwrap_or("")
            .contains("db-dump")
    });
    let took = ended.elapsed() - job_ended;
    assert!(
        seen,
        "the new failure never showed: {}",
        browser.text("#live")
    );
    assert!(took <= Duration::from_secs(2), "it took {took:?} to show");
    assert_eq!(
        browser.eval("return window.notReloaded === true;"),
        Value::Bool(true)
    );
    assert!(
        browser.text("#summary").contains("2 failed"),
        "{}",
        browser.text("#summary")
    );

    // The job's page: its runs, their output, a chart.
    browser.open(&format!("http://{}/job/there/backup-home", here.http()));
    let runs = browser.text("table.runs");
    assert!(
        runs.contains("23") && runs.contains("rsync: connection refused"),
        "{runs}"
    );
    assert_eq!(
        browser.eval("return document.querySelectorAll('figure.chart rect').length;"),
        serde_json::json!(1)
    );
    // The machine's page follows its lines live.
    browser.open(&format!("http://{}/machine/there", here.http()));
    assert!(browser.text("#lines").contains("pg_dump: out of disk"));
    run_ok(&[
        "publish",
        "--path",
        there_path,
        "--type",
        "log",
        "--text",
        "a line to follow",
    ]);
    assert!(
        wait_until(Duration::from_secs(10), || browser
            .text("#lines")
            .contains("a line to follow")),
        "{}",
        browser.text("#lines")
    );
    // A search finds it, as text.
    browser.open(&format!("http://{}/search?q=PWNED", here.http()));
    let results = browser.text("ol.results");
    assert!(results.contains(hostile), "{results}");
    assert_eq!(
        browser.eval("return window.pwned === undefined;"),
        Value::Bool(true)
    );
    assert!(
        browser.text("p.searched").contains("found"),
        "{}",
        browser.text("p.searched")
    );
    drop(browser);

    // A phone's width: every column still there, nothing wider than the screen.
    let phone = browser::Browser::start(390, 844);
    phone.open(&page);
    let overflow =
        phone.eval("return document.documentElement.scrollWidth <= window.innerWidth + 1;");
    assert_eq!(
        overflow,
        Value::Bool(true),
        "the page is wider than a phone"
    );
    assert!(phone.text("tr.r-failed").contains("backup-home"));
    phone.screenshot(&artifact("status-page-phone.png"));
}

#[test]
fn the_page_works_without_javascript_and_embeds_everything() {
    if !system_available("FUSE", fuse_available()) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(&dir.path().join("nas"), "nas", &[]);
    let path = daemon.path.to_str().expect("utf8");
    assert_eq!(job(path, "backup", "exit 1"), 1);
    let base = format!("http://{}", daemon.http());
    let page = get(&format!("{base}/"), &[]);
    assert_eq!(page.status, 200);
    // Server-rendered: the table is in the HTML itself.
    assert!(
        page.body.contains("<table class=\"jobs\">"),
        "{}",
        page.body
    );
    assert!(page.body.contains("✗ failed"), "{}", page.body);
    // Nothing from another host, and no inline script.
    for needle in ["http://", "https://", "<script>", "style=\""] {
        assert!(!page.body.contains(needle), "{needle} in {}", page.body);
    }
    let csp = page.header("content-security-policy").expect("a CSP");
    assert!(
        csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    for asset in ["/assets/app.css", "/assets/app.js"] {
        let answer = get(&format!("{base}{asset}"), &[]);
        assert_eq!(answer.status, 200, "{asset}");
        assert!(!answer.body.contains("http://") && !answer.body.contains("https://"));
    }
    // Read-only: nothing but GET.
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let post = agent.post(&format!("{base}/")).send("x").expect("answers");
    assert_eq!(post.status().as_u16(), 405);
    // Badges, as an SVG and as shields.io's endpoint JSON.
    let svg = get(&format!("{base}/badge/nas/backup.svg"), &[]);
    assert_eq!(svg.header("content-type"), Some("image/svg+xml"));
    assert!(svg.body.contains("failed"), "{}", svg.body);
    let shields: Value =
        serde_json::from_str(&get(&format!("{base}/badge/nas/backup.json"), &[]).body)
            .expect("JSON");
    assert_eq!(shields["schemaVersion"], 1);
    assert_eq!(shields["message"], "failed");
    assert_eq!(shields["color"], "red");
    assert_eq!(get(&format!("{base}/machine/nobody"), &[]).status, 404);
}

/// The JSON of a health report without what changes from one moment to
/// the next.
fn steady(mut report: Value) -> Value {
    if let Some(object) = report.as_object_mut() {
        object.remove("at");
    }
    if let Some(rows) = report["rows"].as_array_mut() {
        for row in rows {
            if let Some(row) = row.as_object_mut() {
                row.remove("age_ms");
                row.remove("age");
            }
        }
    }
    report
}

#[test]
fn api_health_is_health_json() {
    if !system_available("FUSE", fuse_available()) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(&dir.path().join("nas"), "nas", &[]);
    let path = daemon.path.to_str().expect("utf8");
    assert_eq!(job(path, "backup", "echo disk full; exit 1"), 1);
    assert_eq!(job(path, "certbot", "true"), 0);
    let from_cli: Value =
        serde_json::from_slice(&run(&["health", "--path", path, "--json"]).stdout).expect("JSON");
    let from_web: Value =
        serde_json::from_str(&get(&format!("http://{}/api/health", daemon.http()), &[]).body)
            .expect("JSON");
    assert_eq!(
        from_cli["rows"].as_array().map(Vec::len),
        Some(2),
        "{from_cli}"
    );
    assert_eq!(steady(from_web), steady(from_cli));
}

#[test]
fn beyond_loopback_every_request_needs_the_token() {
    if !system_available("FUSE", fuse_available()) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    // Without a token the daemon refuses to open the page to the network.
    let refused = run(&[
        "serve",
        "--path",
        dir.path().join("open").to_str().expect("utf8"),
        "--no-mount",
        "--no-discovery",
        "--port",
        "0",
        "--http",
        "0.0.0.0:0",
    ]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("--http-token"), "{stderr}");

    const TOKEN: &str = "5f0c2a9e41b7d3e8a6c1";
    let path = dir.path().join("nas");
    let daemon = Daemon::start_in(
        None,
        &path,
        "nas",
        &[
            "--no-discovery",
            "--port",
            "0",
            "--http",
            "0.0.0.0:0",
            "--http-token",
            TOKEN,
        ],
    );
    let port = daemon
        .http()
        .rsplit(':')
        .next()
        .expect("a port")
        .to_string();
    let base = format!("http://127.0.0.1:{port}");
    for page in [
        "/",
        "/api/health",
        "/metrics",
        "/badge/nas/x.svg",
        "/events",
        "/assets/app.js",
    ] {
        let answer = get(&format!("{base}{page}"), &[]);
        assert_eq!(answer.status, 401, "{page} without the token");
        assert!(!answer.body.contains("<table"), "{page}");
        let wrong = get(
            &format!("{base}{page}"),
            &[("authorization", "Bearer 5f0c2a9e41b7d3e8a6c2")],
        );
        assert_eq!(wrong.status, 401, "{page} with a wrong token");
    }
    let bearer = format!("Bearer {TOKEN}");
    assert_eq!(
        get(&format!("{base}/api/health"), &[("authorization", &bearer)]).status,
        200
    );
    assert_eq!(
        get(&format!("{base}/metrics"), &[("authorization", &bearer)]).status,
        200
    );
    // Once in the address: a cookie, and the address without it.
    let once = get(&format!("{base}/?token={TOKEN}"), &[]);
    assert_eq!(once.status, 303);
    assert_eq!(once.header("location"), Some("/"));
    let cookie = once
        .header("set-cookie")
        .and_then(|c| c.split(';').next())
        .expect("a cookie")
        .to_string();
    assert!(!cookie.contains(TOKEN), "the cookie is not the token");
    let page = get(&format!("{base}/"), &[("cookie", &cookie)]);
    assert_eq!(page.status, 200);
    assert!(page.body.contains("<table class=\"jobs\">"));
    // The token is saved, and never in the log or the status.
    let config = std::fs::read_to_string(path.join("config")).expect("config");
    assert!(config.contains(TOKEN));
    assert!(!daemon.log().contains(TOKEN));
    assert!(!daemon.read("status").contains(TOKEN));
}

#[test]
fn a_busy_port_is_a_warning_not_a_failure() {
    if !system_available("FUSE", fuse_available()) {
        return;
    }
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("binds");
    let address = taken.local_addr().expect("address").to_string();
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start_in(
        None,
        &dir.path().join("nas"),
        "nas",
        &["--no-discovery", "--port", "0", "--http", &address],
    );
    assert!(daemon.read("whoami").starts_with('@'));
    assert!(
        wait_until(Duration::from_secs(10), || daemon
            .log()
            .contains("status page: cannot listen on")),
        "{}",
        daemon.log()
    );
}

#[test]
fn prometheus_scrapes_the_jobs() {
    if !system_available("FUSE", fuse_available())
        || !system_available("prometheus", Path::new("/usr/bin/prometheus").exists())
    {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(&dir.path().join("nas"), "nas", &[]);
    let path = daemon.path.to_str().expect("utf8");
    assert_eq!(job(path, "backup", "exit 23"), 23);
    assert_eq!(job(path, "certbot", "true"), 0);
    let target = daemon.http();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: scuttlefs\n    \
             static_configs:\n      - targets: ['{target}']\n"
        ),
    )
    .expect("config");
    let port = common::ssb_server::free_port();
    let _prometheus = Helper(
        Command::new("/usr/bin/prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus starts"),
    );
    let query = |promql: &str| -> Option<String> {
        let url = format!(
            "http://127.0.0.1:{port}/api/v1/query?query={}",
            percent_encoding::utf8_percent_encode(promql, percent_encoding::NON_ALPHANUMERIC)
        );
        let answer = ureq::get(&url)
            .call()
            .ok()?
            .body_mut()
            .read_to_string()
            .ok()?;
        let answer: Value = serde_json::from_str(&answer).ok()?;
        answer["data"]["result"][0]["value"][1]
            .as_str()
            .map(String::from)
    };
    let mut seen = (None, None);
    assert!(
        wait_until(Duration::from_secs(60), || {
            seen = (
                query(r#"scuttlefs_job_up{machine="nas",source="backup"}"#),
                query(r#"scuttlefs_job_up{machine="nas",source="certbot"}"#),
            );
            seen == (Some("0".into()), Some("1".into()))
        }),
        "PromQL saw {seen:?}"
    );
    assert_eq!(
        query(r#"scuttlefs_job_last_exit_code{source="backup"}"#).as_deref(),
        Some("23")
    );
    assert!(query("scuttlefs_messages_total").is_some());
}

#[test]
fn strangers_holding_connections_cost_the_daemon_no_more_than_the_page() {
    if !system_available("FUSE", fuse_available()) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(&dir.path().join("nas"), "nas", &[]);
    let address = daemon.http();
    let pid = daemon.child.as_ref().expect("running").id();
    let descriptors = || {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    let before = descriptors();
    // Connections that send nothing, as a slow stranger's would, until
    // the kernel's backlog is full too (connects then time out).
    let target: std::net::SocketAddr = address.parse().expect("an address");
    let mut held = Vec::new();
    let mut timeouts = 0;
    while held.len() < 400 && timeouts < 3 {
        match std::net::TcpStream::connect_timeout(&target, Duration::from_secs(1)) {
            Ok(stream) => held.push(stream),
            Err(_) => timeouts += 1,
        }
    }
    assert!(
        held.len() >= 200,
        "only {} connections were made",
        held.len()
    );
    assert!(
        wait_until(Duration::from_secs(10), || descriptors() >= before + 100),
        "the page took no connection at all"
    );
    let during = descriptors();
    assert!(
        during <= before + 128 + 8,
        "{during} descriptors with {} idle connections (from {before})",
        held.len()
    );
    // The daemon's own work goes on.
    let out = daemon.sh("echo 'written while the page is full' >> publish");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(daemon
        .read("merged.log")
        .contains("written while the page is full"));
    drop(held);
    assert!(
        wait_until(Duration::from_secs(20), || get(
            &format!("http://{address}/"),
            &[]
        )
        .status
            == 200),
        "the page did not come back once the connections closed"
    );
}
