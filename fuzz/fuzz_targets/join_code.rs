//! Join codes (src/join.rs), as `scuttlefs join` takes them from a user
//! who pasted them from somewhere.
//!
//! Invariants: parsing never panics; a parsed code encodes to a code that
//! parses back to the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use scuttlefs::join::JoinCode;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(code) = JoinCode::parse(text) else {
        return;
    };
    let back = JoinCode::parse(&code.encode()).expect("an encoded code parses");
    assert_eq!(back, code);
});
