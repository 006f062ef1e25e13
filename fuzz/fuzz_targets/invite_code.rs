//! Invite codes (src/net/invite.rs), as `scuttlefs invite accept` takes them
//! from a user: the legacy `HOST:PORT:@KEY.ed25519~SEED` and the multiserver
//! `net:HOST:PORT~shs:KEY:SEED` forms.
//!
//! Invariants: parsing never panics; a pub invite printed in the legacy form
//! (as `invite create` prints it) parses back to the same invite; a room
//! invite printed as ssb-room prints it parses back to the same room.
#![no_main]

use libfuzzer_sys::fuzz_target;
use scuttlefs::net::invite::{legacy_code, Invite, ROOM_SEED};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Invite::parse(text) {
        Ok(Invite::Pub { address, seed }) => {
            let code = legacy_code(&address.host, address.port, &address.key, &seed);
            let back = Invite::parse(&code)
                .unwrap_or_else(|e| panic!("{text:?} printed as {code:?}, which does not parse: {e}"));
            assert_eq!(back, Invite::Pub { address, seed }, "printed as {code:?}");
        }
        Ok(Invite::Room { address }) => {
            let code = format!("{address}:{ROOM_SEED}");
            let back = Invite::parse(&code)
                .unwrap_or_else(|e| panic!("{text:?} printed as {code:?}, which does not parse: {e}"));
            assert_eq!(back, Invite::Room { address }, "printed as {code:?}");
        }
        Err(_) => {}
    }
});
