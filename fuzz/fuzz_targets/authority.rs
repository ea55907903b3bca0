//! Host and authority parsing: never panics, and whatever it accepts is
//! canonical (parsing the canonical text again gives the same host).
#![no_main]

use agent_sandbox::policy::{parse_authority, Host};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Ok(h) = Host::parse(s) {
        let again = Host::parse(&h.to_string()).expect("canonical host reparses");
        assert_eq!(again, h);
        if let Host::Name(n) = &h {
            assert!(n.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'));
        }
    }
    for default in [None, Some(80)] {
        if let Ok((h, port)) = parse_authority(s, default) {
            assert!(port > 0);
            let text = format!("{h}:{port}");
            assert_eq!(parse_authority(&text, None).expect("canonical authority reparses"), (h, port));
        }
    }
});
