//! LAN discovery packets and multiserver addresses (src/net/address.rs, as
//! src/net/discovery.rs and the `--peer` option use them).
//!
//! Invariants: every address parsed prints to text that parses back to the
//! same address; a packet rebuilt from the addresses found in one parses to
//! the same list.
#![no_main]

use libfuzzer_sys::fuzz_target;
use scuttlefs::net::address::PeerAddress;

fn round_trip(address: &PeerAddress) -> String {
    let text = address.to_string();
    let back = PeerAddress::parse(&text)
        .unwrap_or_else(|e| panic!("{address:?} printed as {text:?}, which does not parse: {e}"));
    assert_eq!(&back, address, "printed as {text:?}");
    assert!(!back.host.is_empty());
    text
}

fuzz_target!(|data: &[u8]| {
    // discovery.rs drops packets that are not UTF-8.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let found = PeerAddress::parse_many(text);
    let printed: Vec<String> = found.iter().map(round_trip).collect();
    assert_eq!(PeerAddress::parse_many(&printed.join(";")), found);
    if let Ok(address) = PeerAddress::parse(text) {
        round_trip(&address);
    }
});
