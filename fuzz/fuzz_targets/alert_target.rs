//! Alert target URLs (src/alert/target.rs), as `scuttlefs alert add` takes
//! them from a user and the daemon reads them from the config.
//!
//! Invariants: parsing never panics; a target with a password shows it
//! masked; a parsed target's URL parses back to the same target.
#![no_main]

use libfuzzer_sys::fuzz_target;
use scuttlefs::alert::target::Target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(target) = Target::parse(text) else {
        return;
    };
    let back = Target::parse(&target.url()).expect("a target's URL parses");
    assert_eq!(back, target);
    let has_password = match &target {
        Target::Ntfy { endpoint, .. } | Target::Json { endpoint, .. } => {
            endpoint.credentials.is_some()
        }
        Target::Mail { mail, .. } => mail.credentials.is_some(),
        Target::Exec { .. } | Target::Desktop => false,
    };
    if has_password {
        let masked = target.masked();
        assert!(masked.contains(":****@"), "{text:?} masked as {masked:?}");
    }
    let _ = target.fingerprint();
});
