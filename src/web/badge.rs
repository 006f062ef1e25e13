//! Badges: a job's state as a small SVG, and as shields.io's endpoint
//! JSON (`https://img.shields.io/endpoint?url=…`).

use serde_json::{json, Value};

use super::html::Text;

/// A badge's colour for a state (shields.io's names and their hex).
fn colour(state: &str) -> (&'static str, &'static str) {
    match state {
        "ok" => ("brightgreen", "#2e7d32"),
        "running" => ("blue", "#1565c0"),
        "late" | "clock" => ("orange", "#b35c00"),
        "quiet" => ("lightgrey", "#616161"),
        "unknown" => ("lightgrey", "#616161"),
        _ => ("red", "#c62828"),
    }
}

/// shields.io's endpoint JSON for a job in `state`.
pub fn shields(label: &str, state: &str) -> Value {
    json!({
        "schemaVersion": 1,
        "label": label,
        "message": state,
        "color": colour(state).0,
    })
}

/// A flat two-part badge: `label | state`.
pub fn svg(label: &str, state: &str) -> String {
    // Verdana 11px averages about 7 px a character.
    let width = |text: &str| 10 + 7 * text.chars().count();
    let (left, right) = (width(label), width(state));
    let total = left + right;
    let hex = colour(state).1;
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{total}\" height=\"20\" role=\"img\" \
         aria-label=\"{label}: {state}\"><title>{label}: {state}</title>\
         <rect width=\"{left}\" height=\"20\" fill=\"#555\"/>\
         <rect x=\"{left}\" width=\"{right}\" height=\"20\" fill=\"{hex}\"/>\
         <g fill=\"#fff\" font-family=\"Verdana,DejaVu Sans,sans-serif\" font-size=\"11\" text-anchor=\"middle\">\
         <text x=\"{lx}\" y=\"14\">{label}</text><text x=\"{rx}\" y=\"14\">{state}</text></g></svg>\n",
        label = Text(label),
        state = Text(state),
        lx = left / 2,
        rx = left + right / 2,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn badges_escape_and_colour() {
        let badge = svg("<b>", "failed");
        assert!(badge.contains("&lt;b&gt;"), "{badge}");
        assert!(badge.contains("#c62828"));
        assert_eq!(shields("backup", "ok")["color"], "brightgreen");
        assert_eq!(shields("backup", "ok")["schemaVersion"], 1);
    }
}
