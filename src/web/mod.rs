//! The status page (`serve --http`): every job and machine in a browser,
//! live; a machine's lines; a job's runs; a search of merged.log; and for
//! tools, `/api/health`, `/metrics` and badges. It is read-only: every
//! route is a GET, and each reads through [`crate::query`].
//!
//! Security: all text is escaped ([`html`]), every answer carries a strict
//! Content-Security-Policy (scripts and styles only from this server, no
//! inline script), and beyond loopback every request needs the token
//! ([`auth`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::Deserialize;

use crate::clock::now_ms;
use crate::node::Node;
use crate::query;

mod auth;
pub mod badge;
pub mod html;
mod listener;
mod live;
pub mod pages;

/// What every handler shares.
#[derive(Clone)]
struct App {
    node: Arc<Node>,
    /// The token, and the cookie value a browser keeps for it.
    token: Option<auth::Token>,
    live: Arc<tokio::sync::watch::Sender<Arc<String>>>,
}

/// Why the status page cannot be served as configured.
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    /// Reachable from other machines without a token.
    #[error(
        "--http {0} can be reached from other machines: give it a token with --http-token \
         (openssl rand -hex 16 makes one), or listen on 127.0.0.1"
    )]
    NeedsToken(SocketAddr),
}

/// Refuses a page open to the network without a token.
pub fn check(addr: SocketAddr, token: Option<&str>) -> Result<(), WebError> {
    if !addr.ip().is_loopback() && token.is_none() {
        return Err(WebError::NeedsToken(addr));
    }
    Ok(())
}

/// Starts serving at `addr` on the current runtime. A port that is taken
/// is a warning, not a failure: the daemon's work does not depend on the
/// page.
pub async fn start(node: Arc<Node>, addr: SocketAddr, token: Option<String>) {
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(listener) => listener,
        Err(e) => {
            tracing::warn!(
                "status page: cannot listen on {addr} ({e}); carrying on without it \
                 (choose another with --http HOST:PORT, or --http off)"
            );
            return;
        }
    };
    let local = listener.local_addr().unwrap_or(addr);
    if let Ok(mut net) = node.net.write() {
        net.http = Some(local.to_string());
    }
    tracing::info!("status page at http://{local}/");
    let app = App {
        live: Arc::new(live::spawn(node.clone())),
        node,
        token: token.map(|t| auth::Token::new(&t)),
    };
    let router = router(app);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener::Bounded::new(listener), router).await {
            tracing::warn!("status page: {e}");
        }
    });
}

fn router(app: App) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/events", get(events))
        .route("/machine/{name}", get(machine))
        .route("/events/machine/{name}", get(machine_events))
        .route("/job/{machine}/{source}", get(job))
        .route("/search", get(search))
        .route("/api/health", get(api_health))
        .route("/metrics", get(metrics))
        .route("/badge/{machine}/{file}", get(badge))
        .route("/assets/app.css", get(css))
        .route("/assets/app.js", get(js))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            auth::guard,
        ))
        .with_state(app)
}

/// Runs `work` off the async workers (it reads the store and files).
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, Response> + Send + 'static,
) -> Result<T, Response> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|e| Err(internal(format!("a page's work failed: {e}"))))
}

fn internal(message: String) -> Response {
    tracing::warn!("status page: {message}");
    (StatusCode::INTERNAL_SERVER_ERROR, message).into_response()
}

fn unavailable() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        "the daemon's views are not open",
    )
        .into_response()
}

/// An HTML answer, with how long the server took in `Server-Timing`.
fn html_page(page: String, started: Instant) -> Response {
    let mut response = ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], page).into_response();
    add_timing(response.headers_mut(), started);
    response
}

fn add_timing(headers: &mut HeaderMap, started: Instant) {
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    if let Ok(value) = HeaderValue::from_str(&format!("app;dur={ms:.2}")) {
        headers.insert("server-timing", value);
    }
}

/// The live part of `/` as of now, and the report it shows.
fn render_status(node: &Node) -> Option<(String, crate::health::Report, f64)> {
    let now = now_ms();
    let report = query::health(node, now, node.config.max_silence_ms)?;
    let machines = query::machines::machines(node, &report.heard_ms);
    let peers = node.net.read().map(|n| n.peers.clone()).unwrap_or_default();
    let fragment = pages::status_fragment(&report, &machines, &peers, now);
    Some((fragment, report, now))
}

async fn index(State(app): State<App>) -> Response {
    let started = Instant::now();
    let node = app.node.clone();
    match blocking(move || {
        let (fragment, report, now) = render_status(&node).ok_or_else(unavailable)?;
        Ok(pages::status_page(
            &node.config.name,
            &fragment,
            &report,
            now,
        ))
    })
    .await
    {
        Ok(page) => html_page(page, started),
        Err(response) => response,
    }
}

async fn events(State(app): State<App>) -> impl IntoResponse {
    let receiver = app.live.subscribe();
    let stream = futures::stream::unfold(receiver, |mut receiver| async move {
        receiver.changed().await.ok()?;
        let fragment = receiver.borrow_and_update().clone();
        let event = Event::default().event("jobs").data(fragment.as_str());
        Some((Ok::<_, std::convert::Infallible>(event), receiver))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// How many lines a machine's page shows at first.
const MACHINE_LINES: usize = 200;

async fn machine(State(app): State<App>, Path(name): Path<String>) -> Response {
    let started = Instant::now();
    let node = app.node.clone();
    match blocking(move || {
        let now = now_ms();
        let Some(feed) = query::lines::find_machine(&node, &name) else {
            return Err(missing(&node, &format!("No machine called {name}."), now));
        };
        let report =
            query::health(&node, now, node.config.max_silence_ms).ok_or_else(unavailable)?;
        let machines = query::machines::machines(&node, &report.heard_ms);
        let Some(machine) = machines.iter().find(|m| m.feed == feed) else {
            return Err(missing(&node, &format!("Nothing held of {name} yet."), now));
        };
        let rows: Vec<&crate::health::Row> = report.rows.iter().filter(|r| r.id == feed).collect();
        let (lines, end) = query::lines::last_lines(&node, &feed, MACHINE_LINES)
            .map_err(|e| internal(format!("reading {name}'s lines: {e}")))?;
        Ok(pages::machine_page(
            &node.config.name,
            machine,
            &rows,
            &lines,
            end,
            now,
        ))
    })
    .await
    {
        Ok(page) => html_page(page, started),
        Err(response) => response,
    }
}

fn missing(node: &Node, what: &str, now: f64) -> Response {
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        pages::not_found(&node.config.name, what, now),
    )
        .into_response()
}

#[derive(Deserialize)]
struct FromOffset {
    from: Option<u64>,
}

/// The most a machine's live lines send at once.
const LIVE_LINES_BYTES: usize = 256 * 1024;

async fn machine_events(
    State(app): State<App>,
    Path(name): Path<String>,
    Query(query): Query<FromOffset>,
    headers: HeaderMap,
) -> Response {
    let node = app.node.clone();
    let Some(feed) = query::lines::find_machine(&node, &name) else {
        return (StatusCode::NOT_FOUND, "no such machine").into_response();
    };
    // A reconnecting EventSource says where it got to.
    let resumed = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let from = resumed
        .or(query.from)
        .unwrap_or_else(|| node.views().map_or(0, |v| v.feed_log_len(&feed)));
    let stream = futures::stream::unfold((node, from), move |(node, from)| async move {
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let reader = node.clone();
            let read = tokio::task::spawn_blocking(move || {
                query::lines::lines_after(&reader, &feed, from, LIVE_LINES_BYTES)
            })
            .await;
            match read {
                Ok(Ok((lines, next))) if !lines.is_empty() => {
                    let event = Event::default()
                        .event("lines")
                        .id(next.to_string())
                        .data(pages::line_items(&lines));
                    return Some((Ok::<_, std::convert::Infallible>(event), (node, next)));
                }
                Ok(Ok(_)) => {}
                _ => return None,
            }
        }
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// How many runs a job's page shows, and how many lines of each.
const JOB_RUNS: usize = 50;
const RUN_LINES: usize = 200;

async fn job(State(app): State<App>, Path((machine, source)): Path<(String, String)>) -> Response {
    let started = Instant::now();
    let node = app.node.clone();
    match blocking(move || {
        let now = now_ms();
        let Some(feed) = query::lines::find_machine(&node, &machine) else {
            return Err(missing(
                &node,
                &format!("No machine called {machine}."),
                now,
            ));
        };
        let report =
            query::health(&node, now, node.config.max_silence_ms).ok_or_else(unavailable)?;
        let row = report
            .rows
            .iter()
            .find(|r| r.id == feed && r.source.as_deref() == Some(source.as_str()));
        let runs = query::jobs::runs(&node, &feed, &source, JOB_RUNS, RUN_LINES)
            .map_err(|e| internal(format!("reading {source} on {machine}: {e}")))?;
        if row.is_none() && runs.is_empty() {
            return Err(missing(
                &node,
                &format!("No job {source} on {machine}."),
                now,
            ));
        }
        Ok(pages::job_page(
            &node.config.name,
            &machine,
            &source,
            row,
            &runs,
            now,
        ))
    })
    .await
    {
        Ok(page) => html_page(page, started),
        Err(response) => response,
    }
}

#[derive(Deserialize)]
struct SearchQuery {
    #[serde(default)]
    q: String,
}

/// A search stops after this many results, or this long.
const SEARCH_RESULTS: usize = 1000;
const SEARCH_SECONDS: u64 = 5;

async fn search(State(app): State<App>, Query(query): Query<SearchQuery>) -> Response {
    let node = app.node.clone();
    let needle = query.q.trim().to_string();
    let head = pages::search_head(&node.config.name, &needle, now_ms());
    let (sender, receiver) = tokio::sync::mpsc::channel::<String>(64);
    if needle.is_empty() {
        let _ = sender.try_send(head);
        let _ = sender.try_send(
            "</ol><p class=\"searched\">Type what to look for.</p></main></body></html>\n".into(),
        );
    } else {
        let _ = sender.try_send(head);
        tokio::task::spawn_blocking(move || {
            let limits = query::lines::SearchLimits {
                max_results: SEARCH_RESULTS,
                deadline: Instant::now() + Duration::from_secs(SEARCH_SECONDS),
            };
            let mut found = |line: &str| sender.blocking_send(pages::search_result(line)).is_ok();
            match query::lines::search(&node, &needle, limits, &mut found) {
                Ok(summary) => {
                    let _ = sender.blocking_send(pages::search_foot(
                        &summary,
                        SEARCH_RESULTS,
                        SEARCH_SECONDS,
                    ));
                }
                Err(e) => {
                    tracing::warn!("status page: searching merged.log: {e}");
                    let _ = sender.blocking_send("</ol><p>The search failed: see the daemon's log.</p></main></body></html>\n".into());
                }
            }
        });
    }
    let stream = futures::stream::unfold(receiver, |mut receiver| async move {
        let chunk = receiver.recv().await?;
        Some((Ok::<_, std::convert::Infallible>(chunk), receiver))
    });
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        Body::from_stream(stream),
    )
        .into_response()
}

async fn api_health(State(app): State<App>) -> Response {
    let node = app.node.clone();
    match blocking(move || {
        let report =
            query::health(&node, now_ms(), node.config.max_silence_ms).ok_or_else(unavailable)?;
        Ok(report.to_json())
    })
    .await
    {
        Ok(json) => axum::Json(json).into_response(),
        Err(response) => response,
    }
}

async fn metrics(State(app): State<App>) -> Response {
    let started = Instant::now();
    let node = app.node.clone();
    match blocking(move || {
        let report =
            query::health(&node, now_ms(), node.config.max_silence_ms).ok_or_else(unavailable)?;
        query::metrics::render(&node, &report).map_err(|e| internal(format!("metrics: {e}")))
    })
    .await
    {
        Ok(text) => {
            let mut response = (
                [(
                    header::CONTENT_TYPE,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                )],
                text,
            )
                .into_response();
            add_timing(response.headers_mut(), started);
            response
        }
        Err(response) => response,
    }
}

async fn badge(State(app): State<App>, Path((machine, file)): Path<(String, String)>) -> Response {
    let (source, svg) = if let Some(source) = file.strip_suffix(".svg") {
        (source.to_string(), true)
    } else if let Some(source) = file.strip_suffix(".json") {
        (source.to_string(), false)
    } else {
        return (
            StatusCode::NOT_FOUND,
            "a badge is SOURCE.svg or SOURCE.json",
        )
            .into_response();
    };
    let node = app.node.clone();
    let lookup = source.clone();
    let state = blocking(move || {
        let report =
            query::health(&node, now_ms(), node.config.max_silence_ms).ok_or_else(unavailable)?;
        let feed = query::lines::find_machine(&node, &machine);
        Ok(report
            .rows
            .iter()
            .find(|r| Some(r.id) == feed && r.source.as_deref() == Some(lookup.as_str()))
            .map_or("unknown", |r| r.state.name()))
    })
    .await;
    let state = match state {
        Ok(state) => state,
        Err(response) => return response,
    };
    let no_cache = (header::CACHE_CONTROL, "no-cache");
    if svg {
        (
            [(header::CONTENT_TYPE, "image/svg+xml"), no_cache],
            badge::svg(&source, state),
        )
            .into_response()
    } else {
        ([no_cache], axum::Json(badge::shields(&source, state))).into_response()
    }
}

async fn css() -> Response {
    asset("text/css; charset=utf-8", include_str!("assets/app.css"))
}

async fn js() -> Response {
    asset(
        "text/javascript; charset=utf-8",
        include_str!("assets/app.js"),
    )
}

fn asset(kind: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        body,
    )
        .into_response()
}

async fn not_found(State(app): State<App>) -> Response {
    missing(&app.node, "There is no such page.", now_ms())
}
