//! The ssb-keys `secret` file (src/feed/keys.rs), as config.rs reads it.
//!
//! Invariants: a secret that parses writes a file that parses to the same
//! key pair, and that key pair signs what its id verifies.
#![no_main]

use libfuzzer_sys::fuzz_target;
use scuttlefs::feed::Keypair;

fuzz_target!(|data: &[u8]| {
    // config.rs reads the file with read_to_string: only UTF-8 gets here.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(keys) = Keypair::from_secret_file_text(text) else {
        return;
    };
    let written = keys.to_secret_file_text();
    let back = Keypair::from_secret_file_text(&written).expect("our own secret file parses");
    assert_eq!(back.seed(), keys.seed());
    assert_eq!(back.id(), keys.id());
    assert_eq!(back.sodium_secret(), keys.sodium_secret());
    assert!(written.contains(&keys.id().to_string()));
    // The half the file carries is the seed's.
    assert_eq!(Keypair::from_seed(&keys.seed()).id(), keys.id());
    assert_eq!(keys.sodium_secret()[32..], keys.id().0[..]);
});
