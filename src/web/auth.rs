//! The token, and the headers every answer carries.
//!
//! With a token set (`--http-token`, required beyond loopback), a request
//! passes with `Authorization: Bearer T`, or with the cookie a browser got
//! by opening a page once as `?token=T` (answered with a redirect to the
//! same page without it, so the token leaves the address bar). Anything
//! else gets 401.

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use super::App;

/// The page's token, with the cookie value made from it once.
#[derive(Clone)]
pub(super) struct Token {
    token: std::sync::Arc<str>,
    cookie: std::sync::Arc<str>,
}

impl Token {
    /// Holds `token`.
    pub(super) fn new(token: &str) -> Token {
        Token {
            token: token.into(),
            cookie: cookie_value(token).into(),
        }
    }
}

/// The cookie a browser keeps instead of the token.
const COOKIE: &str = "scuttlefs_token";

/// No script but ours, no inline script, no other host for anything.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self'; connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// Checks the token, then adds the security headers to the answer.
pub(super) async fn guard(State(app): State<App>, request: Request, next: Next) -> Response {
    let mut response = match &app.token {
        None => next.run(request).await,
        Some(token) => match check(token, &request) {
            Access::Granted => next.run(request).await,
            Access::FromUrl(location) => redirect_with_cookie(&token.cookie, &location),
            Access::Denied => denied(),
        },
    };
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

enum Access {
    Granted,
    /// The token came in the address: go on to this one, without it.
    FromUrl(String),
    Denied,
}

fn check(held: &Token, request: &Request) -> Access {
    let (token, expected) = (&*held.token, &*held.cookie);
    let headers = request.headers();
    if bearer(headers).is_some_and(|given| same(given.as_bytes(), token.as_bytes())) {
        return Access::Granted;
    }
    if cookies(headers)
        .any(|(name, value)| name == COOKIE && same(value.as_bytes(), expected.as_bytes()))
    {
        return Access::Granted;
    }
    let uri = request.uri();
    if let Some(query) = uri.query() {
        let mut given = None;
        let mut rest = Vec::new();
        for pair in query.split('&') {
            match pair.strip_prefix("token=") {
                Some(value) => given = Some(value),
                None => rest.push(pair),
            }
        }
        let decoded = given.map(|v| {
            percent_encoding::percent_decode_str(v)
                .decode_utf8_lossy()
                .into_owned()
        });
        if decoded.is_some_and(|given| same(given.as_bytes(), token.as_bytes())) {
            let mut location = uri.path().to_string();
            if !rest.is_empty() {
                location.push('?');
                location.push_str(&rest.join("&"));
            }
            return Access::FromUrl(location);
        }
    }
    Access::Denied
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

fn cookies(headers: &HeaderMap) -> impl Iterator<Item = (&str, &str)> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
}

/// The cookie holds a digest of the token, not the token.
fn cookie_value(token: &str) -> String {
    let digest = Sha256::digest(format!("scuttlefs status page cookie\n{token}").as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Compares in time that does not depend on where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn redirect_with_cookie(value: &str, location: &str) -> Response {
    let cookie = format!("{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age=31536000");
    let mut response = StatusCode::SEE_OTHER.into_response();
    if let (Ok(location), Ok(cookie)) = (
        HeaderValue::from_str(location),
        HeaderValue::from_str(&cookie),
    ) {
        response.headers_mut().insert(header::LOCATION, location);
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    response
}

fn denied() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer realm=\"scuttlefs\"")],
        "401: this page needs its token. In a browser, open it once as /?token=TOKEN; \
         tools send Authorization: Bearer TOKEN. The token is in the daemon's config (http_token).\n",
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(uri: &str, headers: &[(&str, &str)]) -> Request {
        let mut builder = Request::builder().uri(uri);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(axum::body::Body::empty()).expect("builds")
    }

    const TOKEN: &str = "0123456789abcdef0123";

    #[test]
    fn the_token_opens_by_header_cookie_or_url_once() {
        let granted = |r: &Request| matches!(check(&Token::new(TOKEN), r), Access::Granted);
        assert!(!granted(&request("/", &[])));
        assert!(granted(&request(
            "/",
            &[("authorization", &format!("Bearer {TOKEN}"))]
        )));
        assert!(!granted(&request(
            "/",
            &[("authorization", "Bearer 0123456789abcdef0124")]
        )));
        let cookie = format!("a=b; {COOKIE}={}", cookie_value(TOKEN));
        assert!(granted(&request("/", &[("cookie", &cookie)])));
        assert!(!granted(&request(
            "/",
            &[("cookie", &format!("{COOKIE}={TOKEN}"))]
        )));
        match check(
            &Token::new(TOKEN),
            &request(&format!("/search?q=x&token={TOKEN}"), &[]),
        ) {
            Access::FromUrl(location) => assert_eq!(location, "/search?q=x"),
            _ => panic!("a token in the address is taken once"),
        }
        assert!(matches!(
            check(&Token::new(TOKEN), &request("/?token=wrong", &[])),
            Access::Denied
        ));
    }
}
