//! The pages, rendered on the server from what the query layer returns.
//! Each is complete without JavaScript; the script only keeps ages current
//! and swaps in what the server sends live. All text goes through
//! [`Text`]: nothing a machine wrote is ever markup.

use std::fmt::Write;

use crate::health::{Report, Row, State};
use crate::net::status::PeerStatus;
use crate::query::jobs::{Run, RunOutcome};
use crate::query::lines::{SearchEnd, SearchSummary};
use crate::query::machines::Machine;

use super::html::{duration, job_href, machine_href, time_element, Text};

/// A state's mark, shown beside its word (never colour alone).
fn mark(state: &str) -> &'static str {
    match state {
        "failed" => "✗",
        "stuck" => "⧗",
        "forked" => "⑂",
        "late" => "⏰",
        "quiet" => "…",
        "clock" => "◷",
        "running" => "▶",
        "lines" => "≡",
        _ => "✓",
    }
}

fn state_badge(state: &str) -> String {
    format!(
        "<span class=\"state s-{state}\">{} {state}</span>",
        mark(state)
    )
}

/// The frame around every page: title, navigation, the script.
pub fn layout(title: &str, machine: &str, now_ms: f64, body: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title}</title>\
         <link rel=\"stylesheet\" href=\"/assets/app.css\">\
         <script src=\"/assets/app.js\" defer></script>\
         </head><body data-now=\"{now}\">\
         <header><a class=\"home\" href=\"/\">scuttlefs</a> <span class=\"here\">on {machine}</span>\
         <form class=\"search\" action=\"/search\" method=\"get\" role=\"search\">\
         <input type=\"search\" name=\"q\" placeholder=\"search every line\" aria-label=\"search every line\">\
         </form></header>\n<main>{body}</main></body></html>\n",
        title = Text(title),
        machine = Text(machine),
        now = now_ms as i64,
    )
}

/// How many rows in each state, worst first: `2 failed · 14 ok`.
pub fn summary(report: &Report) -> (String, &'static str) {
    let mut counts: Vec<(State, usize)> = Vec::new();
    for row in &report.rows {
        match counts.iter_mut().find(|(s, _)| *s == row.state) {
            Some((_, n)) => *n += 1,
            None => counts.push((row.state, 1)),
        }
    }
    counts.sort();
    let worst = counts.first().map_or("ok", |(s, _)| s.name());
    let text = if counts.is_empty() {
        "no jobs yet".to_string()
    } else {
        counts
            .iter()
            .map(|(s, n)| format!("{n} {}", s.name()))
            .collect::<Vec<_>>()
            .join(" · ")
    };
    (text, worst)
}

fn exit_text(row_signal: Option<&str>, exit: Option<i64>) -> String {
    match (row_signal, exit) {
        (Some(signal), _) => signal.to_string(),
        (None, Some(code)) => code.to_string(),
        (None, None) => String::new(),
    }
}

fn job_row(out: &mut String, row: &Row, now_ms: f64) {
    let state = row.state.name();
    let job = match &row.source {
        Some(source) => format!(
            "<a href=\"{}\">{}</a>",
            Text(&job_href(&row.machine, source)),
            Text(source)
        ),
        None => "<span class=\"whole\">(the machine)</span>".to_string(),
    };
    let _ = writeln!(
        out,
        "<tr class=\"r-{state}\"><td data-label=\"state\">{badge}</td>\
         <td data-label=\"machine\"><a href=\"{mhref}\">{machine}</a></td>\
         <td data-label=\"job\">{job}</td>\
         <td data-label=\"last run\">{when}</td>\
         <td data-label=\"took\">{took}</td>\
         <td data-label=\"exit\">{exit}</td>\
         <td data-label=\"schedule\">{schedule}</td>\
         <td data-label=\"last line\" class=\"line\">{line}</td></tr>",
        badge = state_badge(state),
        mhref = Text(&machine_href(&row.machine)),
        machine = Text(&row.machine),
        when = time_element(row.last_run_ms, now_ms),
        took = Text(row.took.as_deref().unwrap_or("")),
        exit = Text(&exit_text(row.signal.as_deref(), row.exit)),
        schedule = Text(&row.schedule().unwrap_or_default()),
        line = Text(&row.last_line),
    );
}

/// The live part of `/`: the summary, every job and quiet machine (as
/// `mount/health` orders them), the machines and the peers. The server
/// sends it again whenever it changes.
pub fn status_fragment(
    report: &Report,
    machines: &[Machine],
    peers: &[PeerStatus],
    now_ms: f64,
) -> String {
    let (summary_text, worst) = summary(report);
    let mut out = String::with_capacity(512 + report.rows.len() * 400);
    let _ = write!(
        out,
        "<p class=\"summary s-{worst}\" id=\"summary\">{mark} {text}</p>\n\
         <h2>Jobs</h2>\n<table class=\"jobs\"><thead><tr><th>state</th><th>machine</th><th>job</th>\
         <th>last run</th><th>took</th><th>exit</th><th>schedule</th><th>last line</th></tr></thead><tbody>\n",
        mark = mark(worst),
        text = Text(&summary_text),
    );
    for row in &report.rows {
        job_row(&mut out, row, now_ms);
    }
    out.push_str("</tbody></table>\n");
    if report.rows.is_empty() {
        out.push_str(
            "<p class=\"empty\">No jobs yet: wrap one with <code>scuttlefs run --source NAME -- COMMAND</code>.</p>\n",
        );
    }
    out.push_str(
        "<h2>Machines</h2>\n<table class=\"machines\"><thead><tr><th>machine</th><th>last heard from</th>\
         <th>messages</th><th>connected</th></tr></thead><tbody>\n",
    );
    for machine in machines {
        let quiet = report
            .rows
            .iter()
            .any(|r| r.id == machine.feed && r.source.is_none() && r.state == State::Quiet);
        let _ = writeln!(
            out,
            "<tr{class}><td data-label=\"machine\"><a href=\"{href}\">{name}</a>{me}{quiet}</td>\
             <td data-label=\"last heard from\">{heard}</td><td data-label=\"messages\">{messages}</td>\
             <td data-label=\"connected\">{connected}</td></tr>",
            class = if quiet { " class=\"r-quiet\"" } else { "" },
            href = Text(&machine_href(&machine.name)),
            name = Text(&machine.name),
            me = if machine.is_self { " <span class=\"me\">(this machine)</span>" } else { "" },
            quiet = if quiet { format!(" {}", state_badge("quiet")) } else { String::new() },
            heard = time_element(machine.last_heard_ms, now_ms),
            messages = machine.messages,
            connected = if machine.is_self {
                "—"
            } else if machine.connected {
                "yes"
            } else {
                "no"
            },
        );
    }
    out.push_str("</tbody></table>\n");
    out.push_str("<h2>Peers</h2>\n");
    if peers.is_empty() {
        out.push_str("<p class=\"empty\">Not connected to any peer now.</p>\n");
    } else {
        out.push_str("<ul class=\"peers\">\n");
        for peer in peers {
            let _ = writeln!(
                out,
                "<li>{name} <span class=\"id\">{id}</span> at {address}, connected {since}</li>",
                name = Text(
                    machines
                        .iter()
                        .find(|m| m.feed == peer.id)
                        .map_or("", |m| m.name.as_str())
                ),
                id = Text(&peer.id.to_string()),
                address = Text(&peer.address),
                since = time_element(peer.since_ms, now_ms),
            );
        }
        out.push_str("</ul>\n");
    }
    out
}

/// `/`: the whole status page.
pub fn status_page(here: &str, fragment: &str, report: &Report, now_ms: f64) -> String {
    let (summary_text, _) = summary(report);
    let body = format!(
        "<noscript><meta http-equiv=\"refresh\" content=\"30\"></noscript>\
         <div id=\"live\" data-events=\"/events\">{fragment}</div>\
         <p class=\"connection\" id=\"connection\" hidden></p>"
    );
    layout(&format!("{summary_text} — scuttlefs"), here, now_ms, &body)
}

/// The lines of a machine's log as list items.
pub fn line_items(lines: &[String]) -> String {
    let mut out = String::with_capacity(lines.len() * 100);
    for line in lines {
        let _ = writeln!(out, "<li>{}</li>", Text(line));
    }
    out
}

/// `/machine/NAME`: its jobs, and its latest lines, followed live.
pub fn machine_page(
    here: &str,
    machine: &Machine,
    rows: &[&Row],
    lines: &[String],
    end: u64,
    now_ms: f64,
) -> String {
    let mut body = String::new();
    let _ = write!(
        body,
        "<h1>{name}</h1><p class=\"id\">{id}</p><p>Last heard from {heard}; {messages} messages held.</p>",
        name = Text(&machine.name),
        id = Text(&machine.feed.to_string()),
        heard = time_element(machine.last_heard_ms, now_ms),
        messages = machine.messages,
    );
    if !rows.is_empty() {
        body.push_str(
            "<h2>Jobs</h2><table class=\"jobs\"><thead><tr><th>state</th><th>machine</th><th>job</th>\
             <th>last run</th><th>took</th><th>exit</th><th>schedule</th><th>last line</th></tr></thead><tbody>\n",
        );
        for row in rows {
            job_row(&mut body, row, now_ms);
        }
        body.push_str("</tbody></table>");
    }
    let _ = write!(
        body,
        "<h2>Latest lines</h2><ol class=\"lines\" id=\"lines\" data-events=\"/events{href}\" data-from=\"{end}\">{items}</ol>",
        href = Text(&machine_href(&machine.name)),
        items = line_items(lines),
    );
    if lines.is_empty() {
        body.push_str("<p class=\"empty\">No lines yet.</p>");
    }
    layout(
        &format!("{} — scuttlefs", machine.name),
        here,
        now_ms,
        &body,
    )
}

/// A small bar chart of the runs' durations, oldest on the left, each bar
/// coloured (and titled) by how the run ended.
fn duration_chart(runs: &[Run]) -> String {
    let timed: Vec<&Run> = runs.iter().rev().filter(|r| r.took_ms.is_some()).collect();
    if timed.is_empty() {
        return String::new();
    }
    let longest = timed
        .iter()
        .filter_map(|r| r.took_ms)
        .fold(1.0_f64, f64::max);
    let (width, height, gap) = (12.0, 60.0, 3.0);
    let total = timed.len() as f64 * (width + gap);
    let mut out = format!(
        "<figure class=\"chart\"><svg viewBox=\"0 0 {total} {h}\" width=\"{total}\" height=\"{h}\" role=\"img\" \
         aria-label=\"durations of the last {n} runs, longest {longest}\">",
        h = height + 2.0,
        n = timed.len(),
        longest = Text(&duration(longest)),
    );
    for (i, run) in timed.iter().enumerate() {
        let took = run.took_ms.unwrap_or(0.0);
        let bar = (took / longest * height).max(1.0);
        let _ = write!(
            out,
            "<rect class=\"b-{outcome}\" x=\"{x}\" y=\"{y}\" width=\"{width}\" height=\"{bar}\"><title>{title}</title></rect>",
            outcome = run.outcome.name(),
            x = i as f64 * (width + gap),
            y = height - bar + 1.0,
            title = Text(&format!(
                "{} {}{}",
                run.outcome.name(),
                duration(took),
                run.start_ms
                    .map(|s| format!(", {}", crate::view::line::format_timestamp(s)))
                    .unwrap_or_default()
            )),
        );
    }
    let _ = write!(
        out,
        "</svg><figcaption>Duration of each run, oldest left; longest {}.</figcaption></figure>",
        Text(&duration(longest))
    );
    out
}

/// `/job/MACHINE/SOURCE`: its state, a chart of its runs' durations, and
/// each run with what it printed.
pub fn job_page(
    here: &str,
    machine: &str,
    source: &str,
    row: Option<&Row>,
    runs: &[Run],
    now_ms: f64,
) -> String {
    let mut body = String::new();
    let _ = write!(
        body,
        "<h1><a href=\"{mhref}\">{machine}</a> / {source}</h1>",
        mhref = Text(&machine_href(machine)),
        machine = Text(machine),
        source = Text(source),
    );
    if let Some(row) = row {
        let _ = write!(
            body,
            "<p class=\"now\">{badge} last run {when}{schedule}</p>",
            badge = state_badge(row.state.name()),
            when = time_element(row.last_run_ms, now_ms),
            schedule = row
                .schedule()
                .map(|s| format!(", runs {}", Text(&s)))
                .unwrap_or_default(),
        );
    }
    body.push_str(&duration_chart(runs));
    body.push_str(
        "<h2>Runs</h2><table class=\"runs\"><thead><tr><th>started</th><th>took</th><th>exit</th>\
         <th>state</th><th>output</th></tr></thead><tbody>\n",
    );
    for run in runs {
        let state = run.outcome.name();
        let started = run
            .start_ms
            .or(run.end_ms)
            .map(|at| time_element(at, now_ms))
            .unwrap_or_default();
        let took = run
            .took
            .clone()
            .or_else(|| {
                (run.outcome == RunOutcome::Running)
                    .then(|| {
                        run.start_ms
                            .map(|s| format!("{} so far", duration(now_ms - s)))
                    })
                    .flatten()
            })
            .unwrap_or_default();
        let mut output = String::new();
        if !run.output.is_empty() {
            let _ = write!(
                output,
                "<details{open}><summary>{n} line{s}{cut}</summary><pre>",
                open = if run.outcome == RunOutcome::Failed {
                    " open"
                } else {
                    ""
                },
                n = run.output.len() + run.output_cut,
                s = if run.output.len() + run.output_cut == 1 {
                    ""
                } else {
                    "s"
                },
                cut = if run.output_cut > 0 {
                    format!(", the last {} shown", run.output.len())
                } else {
                    String::new()
                },
            );
            for line in &run.output {
                let _ = writeln!(output, "{}", Text(line));
            }
            output.push_str("</pre></details>");
        }
        let _ = writeln!(
            body,
            "<tr class=\"r-{state}\"><td data-label=\"started\">{started}</td><td data-label=\"took\">{took}</td>\
             <td data-label=\"exit\">{exit}</td><td data-label=\"state\">{badge}</td>\
             <td data-label=\"output\" class=\"output\">{output}</td></tr>",
            took = Text(&took),
            exit = Text(&exit_text(run.signal.as_deref(), run.exit)),
            badge = state_badge(state),
        );
    }
    body.push_str("</tbody></table>");
    if runs.is_empty() {
        body.push_str("<p class=\"empty\">No runs held for this job.</p>");
    }
    layout(
        &format!("{source} on {machine} — scuttlefs"),
        here,
        now_ms,
        &body,
    )
}

/// The top of a search's page, sent before any result.
pub fn search_head(here: &str, query: &str, now_ms: f64) -> String {
    let body = format!(
        "<h1>Lines with “{q}”</h1><p>Newest first, from every machine's lines in merged.log.</p><ol class=\"lines results\">\n</ol>",
        q = Text(query)
    );
    let page = layout(
        &format!("{query} — search — scuttlefs"),
        here,
        now_ms,
        &body,
    );
    // Cut before the closing tags: results and the foot follow.
    match page.find("</ol>") {
        Some(at) => page[..at].to_string(),
        None => page,
    }
}

/// One result.
pub fn search_result(line: &str) -> String {
    format!("<li>{}</li>\n", Text(line))
}

/// The end of a search's page: how it ended.
pub fn search_foot(summary: &SearchSummary, max_results: usize, seconds: u64) -> String {
    let why = match summary.end {
        SearchEnd::Searched => format!("{} found; every line searched.", summary.results),
        SearchEnd::EnoughResults => format!(
            "The newest {max_results} shown; stopped there. Narrow the search for older ones."
        ),
        SearchEnd::OutOfTime => format!(
            "{} found in the newest {} searched; stopped after {seconds} s. Narrow the search, or use grep on the mount.",
            summary.results,
            bytes(summary.bytes_read)
        ),
        SearchEnd::Abandoned => String::new(),
    };
    format!(
        "</ol><p class=\"searched\">{}</p></main></body></html>\n",
        Text(&why)
    )
}

/// A byte count as a person reads it.
fn bytes(n: u64) -> String {
    match n {
        0..=1023 => format!("{n} B"),
        1024..=1_048_575 => format!("{} KiB", n / 1024),
        _ => format!("{} MiB", n / 1_048_576),
    }
}

/// The page for a machine or job that does not exist.
pub fn not_found(here: &str, what: &str, now_ms: f64) -> String {
    layout(
        "not found — scuttlefs",
        here,
        now_ms,
        &format!(
            "<h1>Not found</h1><p>{}</p><p><a href=\"/\">Every job</a></p>",
            Text(what)
        ),
    )
}
