//! Escaping. Every line on the page was written by some machine, so every
//! piece of text goes through [`Text`] (or [`attr`]) on its way in: a line
//! `<script>…` shows as that text.

use std::fmt::{self, Display, Write};

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

/// Text to put in HTML (element content or a quoted attribute): `&`, `<`,
/// `>`, `"` and `'` escaped, control characters shown as `\xNN`.
pub struct Text<'a>(pub &'a str);

impl Display for Text<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars() {
            match c {
                '&' => f.write_str("&amp;")?,
                '<' => f.write_str("&lt;")?,
                '>' => f.write_str("&gt;")?,
                '"' => f.write_str("&quot;")?,
                '\'' => f.write_str("&#39;")?,
                c if c.is_control() && c != '\n' && c != '\t' => {
                    write!(f, "\\x{:02x}", c as u32)?;
                }
                c => f.write_char(c)?,
            }
        }
        Ok(())
    }
}

/// The same, as a `String`.
pub fn escape(text: &str) -> String {
    Text(text).to_string()
}

/// What a path segment keeps unencoded: letters, digits, `-._~`.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// `text` as one URL path segment (a `/` in a job's source is encoded).
pub fn segment(text: &str) -> String {
    utf8_percent_encode(text, SEGMENT).to_string()
}

/// The link to a machine's page.
pub fn machine_href(machine: &str) -> String {
    format!("/machine/{}", segment(machine))
}

/// The link to a job's page.
pub fn job_href(machine: &str, source: &str) -> String {
    format!("/job/{}/{}", segment(machine), segment(source))
}

/// How long ago, as a person says it; the page's script keeps it
/// current with the same rule.
pub fn ago(ms: f64) -> String {
    let secs = (ms / 1000.0).max(0.0) as u64;
    match secs {
        0..=59 => "just now".into(),
        60..=3599 => format!("{} min ago", secs / 60),
        3600..=86_399 => format!("{} h ago", secs / 3600),
        _ => format!("{} d ago", secs / 86_400),
    }
}

/// A duration as a person reads it (`1.2 s`, `3 min 4 s`).
pub fn duration(ms: f64) -> String {
    let ms = ms.max(0.0);
    if ms < 1000.0 {
        return format!("{} ms", ms.round() as u64);
    }
    if ms < 60_000.0 {
        return format!("{:.1} s", ms / 1000.0);
    }
    let secs = (ms / 1000.0).round() as u64;
    if secs < 3600 {
        return format!("{} min {} s", secs / 60, secs % 60);
    }
    format!("{} h {} min", secs / 3600, secs % 3600 / 60)
}

/// A `<time>` element: the relative age as text, the moment in its
/// `datetime` and `title`, for the script to keep current.
pub fn time_element(at_ms: f64, now_ms: f64) -> String {
    let iso = crate::view::line::format_timestamp(at_ms);
    format!(
        "<time datetime=\"{iso}\" title=\"{iso}\" data-ms=\"{}\">{}</time>",
        at_ms as i64,
        ago(now_ms - at_ms)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_text_is_only_text() {
        assert_eq!(
            escape("<script>alert('x')</script> & \"q\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
        assert_eq!(escape("bell\u{7}"), "bell\\x07");
    }

    #[test]
    fn segments_keep_slashes_inside() {
        assert_eq!(job_href("nas", "backup/home"), "/job/nas/backup%2Fhome");
        assert_eq!(segment("a b<"), "a%20b%3C");
    }

    #[test]
    fn ages_and_durations() {
        assert_eq!(ago(5_000.0), "just now");
        assert_eq!(ago(125_000.0), "2 min ago");
        assert_eq!(ago(7_200_000.0), "2 h ago");
        assert_eq!(duration(1_234.0), "1.2 s");
        assert_eq!(duration(184_000.0), "3 min 4 s");
    }
}
