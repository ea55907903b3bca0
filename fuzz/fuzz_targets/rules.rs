//! Rule parsing and matching: never panics; a policy that builds answers
//! every question without panicking, and a name with no allow rule is denied.
#![no_main]

use std::collections::HashSet;

use agent_sandbox::policy::{Host, Policy};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let mut lines = s.split('\n');
    let probe = lines.next().unwrap_or("");
    let mut b = Policy::builder();
    for (i, line) in lines.enumerate() {
        b = match i % 4 {
            0 => b.allow(line),
            1 => b.deny(line),
            2 => b.allow_cidr(line),
            _ => match b.clone().resolve_spec(line) {
                Ok(nb) => nb,
                Err(_) => b,
            },
        };
    }
    let Ok(policy) = b.build() else { return };
    if let Ok(host) = Host::parse(probe) {
        for port in [1, 80, 443, 65535] {
            if let Ok(allowed) = policy.check_host(&host, port) {
                if let Some(addrs) = &allowed.addrs {
                    let _ = policy.check_addrs(addrs, port, allowed.pinned, &HashSet::new());
                }
            }
        }
    }
    assert!(Policy::deny_all().check_host(&Host::Name("a.test".into()), 443).is_err());
});
