//! What the benchmarks share.

use scuttlefs::config::Config;

/// The configuration of a benchmark's node in `dir`: no network, the
/// defaults otherwise.
pub fn config(dir: &std::path::Path) -> Config {
    Config {
        path: dir.to_path_buf(),
        port: 0,
        network_key: [0; 32],
        hops: 3,
        name: "bench".into(),
        host: None,
        max_silence_ms: scuttlefs::health::DEFAULT_MAX_SILENCE_MS,
        remind_ms: Some(scuttlefs::config::DEFAULT_REMIND_MS),
        http: None,
        http_token: None,
        mount: None,
    }
}

/// The number in environment variable `name`, or `default`.
pub fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The median of `xs` (the upper one of an even count).
pub fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs[xs.len() / 2]
}
