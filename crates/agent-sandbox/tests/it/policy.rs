//! Table-driven tests of the pure policy engine: host parsing, rule
//! validation, matching, and the address checks.

use std::collections::HashSet;
use std::net::IpAddr;

use agent_sandbox::policy::{parse_authority, special_range, Denial, Host, Policy};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn hosts_canonicalise_to_one_spelling() {
    let cases = [
        ("github.com", "github.com"),
        ("GitHub.COM", "github.com"),
        ("github.com.", "github.com"),
        ("API.GitHub.Com.", "api.github.com"),
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("XN--BCHER-KVA.example", "xn--bcher-kva.example"),
        ("a-b.c-d.test", "a-b.c-d.test"),
        ("1password.com", "1password.com"),
        ("123.example", "123.example"),
        ("127.0.0.1", "127.0.0.1"),
        ("[::1]", "[::1]"),
        ("[::ffff:127.0.0.1]", "127.0.0.1"),
        ("[::FFFF:7f00:1]", "127.0.0.1"),
        ("[2001:DB8::1]", "[2001:db8::1]"),
    ];
    for (input, want) in cases {
        let got = Host::parse(input).unwrap_or_else(|e| panic!("{input:?} refused: {e}"));
        assert_eq!(got.to_string(), want, "input {input:?}");
    }
}

#[test]
fn hosts_that_parsers_disagree_on_are_refused() {
    let cases = [
        ("", "empty-host"),
        ("user@github.com", "userinfo"),
        ("github.com@evil.test", "userinfo"),
        ("github.com%2eevil.test", "percent"),
        ("%31%32%37.0.0.1", "percent"),
        ("[fe80::1%eth0]", "percent"),
        ("[fe80::1%25eth0]", "percent"),
        ("git\0hub.com", "invalid-char"),
        ("github.com\r\nX-Evil: 1", "invalid-char"),
        ("github.com\n", "invalid-char"),
        ("git hub.com", "invalid-char"),
        ("github.com\t", "invalid-char"),
        ("git_hub.com", "invalid-char"),
        ("github.com/path", "invalid-char"),
        ("github.com\\@evil.test", "invalid-char"),
        ("bücher.example", "non-ascii"),
        ("ｇｉｔｈｕｂ.com", "non-ascii"),
        ("github.com\u{3002}evil.test", "non-ascii"),
        ("a..b", "empty-label"),
        (".github.com", "empty-label"),
        ("github.com..", "empty-label"),
        (".", "empty-label"),
        ("-github.com", "hyphen"),
        ("github-.com", "hyphen"),
        ("2130706433", "numeric-name"),
        ("0x7f000001", "numeric-name"),
        ("0x7f.1", "numeric-name"),
        ("0X7F.0.0.1", "numeric-name"),
        ("127.1", "numeric-name"),
        ("127.0.1", "numeric-name"),
        ("0177.0.0.1", "numeric-name"),
        ("127.000.000.001", "numeric-name"),
        ("017700000001", "numeric-name"),
        ("1.2.3.4.5", "numeric-name"),
        ("256.0.0.1", "numeric-name"),
        ("example.0x1f", "numeric-name"),
        ("::1", "invalid-char"),
        ("[::1", "bad-ipv6"),
        ("[127.0.0.1]", "bad-ipv6"),
        ("[github.com]", "bad-ipv6"),
        ("[::1]x", "bad-ipv6"),
        ("xn--zz.example", "bad-punycode"),
        ("xn--.example", "hyphen"),
        ("xn--a.example", "bad-punycode"),
    ];
    for (input, code) in cases {
        match Host::parse(input) {
            Ok(h) => panic!("{input:?} accepted as {h}"),
            Err(e) => assert_eq!(e.code(), code, "input {input:?}: {e}"),
        }
    }
}

#[test]
fn host_lengths_are_bounded() {
    let label63 = "a".repeat(63);
    assert!(Host::parse(&format!("{label63}.test")).is_ok());
    assert_eq!(
        Host::parse(&format!("a{label63}.test")).unwrap_err().code(),
        "label-too-long"
    );
    let name253 = format!("{0}.{0}.{0}.{1}", label63, "a".repeat(61));
    assert_eq!(name253.len(), 253);
    assert!(Host::parse(&name253).is_ok());
    assert!(
        Host::parse(&format!("{name253}.")).is_ok(),
        "a trailing dot does not count"
    );
    assert_eq!(
        Host::parse(&format!("a{name253}")).unwrap_err().code(),
        "name-too-long"
    );
}

#[test]
fn authorities_parse_strictly() {
    let ok = [
        ("github.com:443", None, "github.com", 443),
        ("GITHUB.com.:8443", None, "github.com", 8443),
        ("[::1]:22", None, "[::1]", 22),
        ("10.1.2.3:65535", None, "10.1.2.3", 65535),
        ("example.test", Some(80), "example.test", 80),
        ("[::1]", Some(80), "[::1]", 80),
    ];
    for (input, default, host, port) in ok {
        let (h, p) = parse_authority(input, default).unwrap_or_else(|e| panic!("{input:?}: {e}"));
        assert_eq!((h.to_string().as_str(), p), (host, port), "input {input:?}");
    }
    let bad = [
        ("github.com", None, "missing-port"),
        ("github.com:", None, "bad-port"),
        ("github.com:0", None, "bad-port"),
        ("github.com:65536", None, "bad-port"),
        ("github.com:+443", None, "invalid-char"),
        ("github.com:0443", None, "bad-port"),
        ("github.com:443:443", None, "invalid-char"),
        ("github.com: 443", None, "invalid-char"),
        ("github.com:4a", None, "bad-port"),
        ("user:pw@github.com:443", None, "userinfo"),
        ("::1:443", None, "invalid-char"),
        ("[::1]443", None, "bad-ipv6"),
        ("[fe80::1%eth0]:443", None, "percent"),
        ("2130706433:443", None, "numeric-name"),
        ("0x7f.1:80", None, "numeric-name"),
        (":443", None, "empty-host"),
    ];
    for (input, default, code) in bad {
        match parse_authority(input, default) {
            Ok((h, p)) => panic!("{input:?} accepted as {h}:{p}"),
            Err(e) => assert_eq!(e.code(), code, "input {input:?}: {e}"),
        }
    }
}

#[test]
fn malformed_rules_are_errors_naming_the_rule() {
    let bad = [
        "",
        "   ",
        "*",
        "*:*",
        ".",
        "*.com",
        ".com",
        "*.co.uk",
        ".co.uk",
        "*.test",
        "https://allowed.test",
        "github.com/org/repo",
        "http://allowed.test:443",
        "github.com:0",
        "github.com:65536",
        "github.com:http",
        "github.com:",
        "github.com:-1",
        "git*.com",
        "*github.com",
        "*.*.github.com",
        "github.*",
        "bücher.example",
        "a..b.com",
        "-a.com",
        "10.0.0.1",
        "[::1]",
        "::1",
        "2130706433",
        "user@github.com",
        "github.com\n",
        "xn--zz.example",
    ];
    for rule in bad {
        let err = Policy::builder()
            .allow("ok.test")
            .allow(rule)
            .build()
            .expect_err(rule);
        assert_eq!(err.rule, rule, "the error names the rule");
        assert!(
            err.to_string().contains(&format!("{rule:?}")),
            "message names the rule: {err}"
        );
        let err = Policy::builder().deny(rule).build().expect_err(rule);
        assert_eq!(err.rule, rule);
    }
    let bad_cidrs = [
        "",
        "10.0.0.0/33",
        "10.0.0.1/8",
        "::1/129",
        "10.0.0.0/",
        "10.0.0.0/x",
        "github.com/8",
        "10.0.0.0/8:0",
        "10.0.0.0/8:x",
        "2130706433/32",
    ];
    for c in bad_cidrs {
        let err = Policy::builder().allow_cidr(c).build().expect_err(c);
        assert_eq!(err.rule, c);
    }
    let bad_pins = [
        "a.test:443",
        "a.test:0:127.0.0.1",
        "a.test:443:localhost",
        "a.test",
        "2130706433:443:127.0.0.1",
    ];
    for p in bad_pins {
        let built = Policy::builder().resolve_spec(p).and_then(|b| b.build());
        let err = built.expect_err(&format!("pin {p:?} accepted"));
        assert!(
            err.to_string().contains(p.split(':').next().unwrap_or(p)),
            "the error names the pin: {err}"
        );
    }
}

#[test]
fn valid_rules_build() {
    let rules = [
        "github.com",
        "*.github.com",
        ".github.com",
        "github.com:22",
        "github.com:*",
        "localhost:*",
        "GitHub.COM.",
        "*.github.io",
        "xn--bcher-kva.example",
    ];
    for r in rules {
        Policy::builder()
            .allow(r)
            .build()
            .unwrap_or_else(|e| panic!("{r}: {e}"));
    }
    let cidrs = [
        "10.0.0.0/8",
        "::1/128",
        "127.0.0.1",
        "::1",
        "0.0.0.0/0",
        "127.0.0.1/32:8080",
        "::1/128:*",
        "::ffff:10.0.0.0/104",
    ];
    for c in cidrs {
        Policy::builder()
            .allow_cidr(c)
            .build()
            .unwrap_or_else(|e| panic!("{c}: {e}"));
    }
}

fn check(p: &Policy, host: &str, port: u16) -> Result<String, Denial> {
    p.check_host(&Host::parse(host).unwrap(), port)
        .map(|a| a.rule)
}

#[test]
fn exact_wildcard_and_dot_rules_match_as_documented() {
    let p = Policy::builder()
        .allow("exact.test")
        .allow("*.sub.test")
        .allow(".dot.test")
        .build()
        .unwrap();
    let cases = [
        ("exact.test", true),
        ("EXACT.test.", true),
        ("www.exact.test", false),
        ("exact.test.evil.test", false),
        ("notexact.test", false),
        ("sub.test", false),
        ("a.sub.test", true),
        ("a.b.c.sub.test", true),
        ("asub.test", false),
        ("dot.test", true),
        ("a.dot.test", true),
        ("a.b.dot.test", true),
        ("xdot.test", false),
        ("dot.test.evil.test", false),
    ];
    for (host, allowed) in cases {
        assert_eq!(check(&p, host, 443).is_ok(), allowed, "host {host}");
    }
}

#[test]
fn ports_default_to_80_and_443() {
    let p = Policy::builder()
        .allow("web.test")
        .allow("ssh.test:22")
        .allow("any.test:*")
        .build()
        .unwrap();
    let cases = [
        ("web.test", 80, true),
        ("web.test", 443, true),
        ("web.test", 22, false),
        ("web.test", 8080, false),
        ("ssh.test", 22, true),
        ("ssh.test", 443, false),
        ("any.test", 1, true),
        ("any.test", 65535, true),
    ];
    for (host, port, allowed) in cases {
        assert_eq!(check(&p, host, port).is_ok(), allowed, "{host}:{port}");
    }
}

#[test]
fn deny_rules_win_and_name_the_rule() {
    let p = Policy::builder()
        .allow(".corp.test:*")
        .deny("secret.corp.test")
        .deny("*.internal.corp.test:8443")
        .build()
        .unwrap();
    assert_eq!(
        check(&p, "secret.corp.test", 443),
        Err(Denial::DenyRule("secret.corp.test".into()))
    );
    assert_eq!(
        check(&p, "secret.corp.test", 9999),
        Err(Denial::DenyRule("secret.corp.test".into())),
        "deny without a port covers every port"
    );
    assert_eq!(
        check(&p, "a.internal.corp.test", 8443),
        Err(Denial::DenyRule("*.internal.corp.test:8443".into()))
    );
    assert_eq!(
        check(&p, "a.internal.corp.test", 443).unwrap(),
        ".corp.test:*"
    );
    assert_eq!(check(&p, "www.corp.test", 443).unwrap(), ".corp.test:*");
    assert_eq!(check(&p, "other.test", 443), Err(Denial::NoMatchingRule));
}

#[test]
fn no_rule_means_no_access() {
    let p = Policy::deny_all();
    for host in ["github.com", "localhost", "127.0.0.1", "[::1]"] {
        assert!(check(&p, host, 443).is_err(), "{host}");
    }
}

#[test]
fn ip_literals_need_a_cidr_rule() {
    let p = Policy::builder()
        .allow("github.com")
        .allow_cidr("10.1.0.0/16")
        .allow_cidr("::1/128:*")
        .build()
        .unwrap();
    assert_eq!(check(&p, "10.1.2.3", 443).unwrap(), "10.1.0.0/16");
    assert_eq!(
        check(&p, "10.1.2.3", 22),
        Err(Denial::IpLiteral(ip("10.1.2.3")))
    );
    assert_eq!(
        check(&p, "10.2.0.1", 443),
        Err(Denial::IpLiteral(ip("10.2.0.1")))
    );
    assert_eq!(check(&p, "[::1]", 5432).unwrap(), "::1/128:*");
    assert_eq!(
        check(&p, "[::ffff:10.1.0.1]", 80).unwrap(),
        "10.1.0.0/16",
        "mapped form is the same address"
    );
    assert!(
        check(&p, "140.82.112.3", 443).is_err(),
        "a public literal is still refused without a CIDR rule"
    );
}

#[test]
fn special_ranges_are_named() {
    let cases = [
        ("0.0.0.0", Some("this-network")),
        ("0.1.2.3", Some("this-network")),
        ("10.9.8.7", Some("private")),
        ("100.64.0.1", Some("cgnat")),
        ("100.127.255.255", Some("cgnat")),
        ("100.128.0.1", None),
        ("127.0.0.1", Some("loopback")),
        ("127.255.255.254", Some("loopback")),
        ("169.254.169.254", Some("link-local")),
        ("168.63.129.16", Some("azure-wireserver")),
        ("172.16.0.1", Some("private")),
        ("172.31.255.255", Some("private")),
        ("172.32.0.1", None),
        ("192.0.0.170", Some("ietf-protocol")),
        ("192.0.2.1", Some("documentation")),
        ("192.168.1.1", Some("private")),
        ("198.18.0.1", Some("benchmarking")),
        ("198.19.255.255", Some("benchmarking")),
        ("224.0.0.1", Some("multicast")),
        ("240.0.0.1", Some("reserved")),
        ("255.255.255.255", Some("broadcast")),
        ("140.82.112.3", None),
        ("1.0.0.1", None),
        ("::", Some("unspecified")),
        ("::1", Some("loopback")),
        ("::ffff:127.0.0.1", Some("loopback")),
        ("::ffff:169.254.169.254", Some("link-local")),
        ("::127.0.0.1", Some("ipv4-compatible")),
        ("64:ff9b::7f00:1", Some("nat64-of-special")),
        ("64:ff9b::a9fe:a9fe", Some("nat64-of-special")),
        ("64:ff9b::8c52:7003", None),
        ("64:ff9b:1::1", Some("nat64-local")),
        ("2002:7f00:1::", Some("6to4-of-special")),
        ("2002:a9fe:a9fe::1", Some("6to4-of-special")),
        ("2002:8c52:7003::1", None),
        ("2001::1", Some("teredo")),
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", Some("teredo")),
        ("2001:2::1", Some("ietf-protocol")),
        ("2001:db8::1", Some("documentation")),
        ("3fff::1", Some("documentation")),
        ("fc00::1", Some("ula")),
        ("fd12:3456::1", Some("ula")),
        ("fe80::1", Some("link-local")),
        ("fec0::1", Some("site-local")),
        ("ff02::1", Some("multicast")),
        ("100::1", Some("discard")),
        ("2606:4700::1111", None),
        ("2a00:1450:4001::1", None),
    ];
    for (addr, want) in cases {
        assert_eq!(special_range(ip(addr)), want, "{addr}");
    }
}

#[test]
fn resolved_addresses_are_all_checked() {
    let p = Policy::builder()
        .allow("app.test")
        .allow_cidr("10.5.0.0/16")
        .build()
        .unwrap();
    let none = HashSet::new();
    let ok = |addrs: &[&str]| {
        p.check_addrs(
            &addrs.iter().map(|a| ip(a)).collect::<Vec<_>>(),
            443,
            false,
            &none,
        )
    };
    assert!(ok(&["140.82.112.3"]).is_ok());
    assert!(
        ok(&["10.5.1.1"]).is_ok(),
        "a CIDR rule opens a private range"
    );
    assert!(
        matches!(
            ok(&["140.82.112.3", "127.0.0.1"]),
            Err(Denial::SpecialAddress {
                range: "loopback",
                ..
            })
        ),
        "one bad answer refuses all"
    );
    assert!(matches!(
        ok(&["::ffff:169.254.169.254"]),
        Err(Denial::SpecialAddress {
            range: "link-local",
            ..
        })
    ));
    assert!(matches!(
        ok(&["10.6.0.1"]),
        Err(Denial::SpecialAddress {
            range: "private",
            ..
        })
    ));
    let host: HashSet<IpAddr> = [ip("140.82.112.9")].into();
    assert_eq!(
        p.check_addrs(&[ip("140.82.112.9")], 443, false, &host),
        Err(Denial::HostAddress(ip("140.82.112.9")))
    );
}

#[test]
fn pins_are_exempt_from_range_checks_but_not_from_rules() {
    let p = Policy::builder()
        .allow("allowed.test")
        .resolve("allowed.test", 443, "127.0.0.1")
        .resolve("denied.test", 443, "127.0.0.1")
        .deny_cidr("127.0.0.2/32:*")
        .resolve("allowed.test", 80, "127.0.0.2")
        .build()
        .unwrap();
    let a = p
        .check_host(&Host::parse("ALLOWED.test.").unwrap(), 443)
        .unwrap();
    assert_eq!(a.addrs, Some(vec![ip("127.0.0.1")]));
    assert!(a.pinned);
    assert!(p
        .check_addrs(&[ip("127.0.0.1")], 443, true, &HashSet::new())
        .is_ok());
    assert_eq!(
        check(&p, "denied.test", 443),
        Err(Denial::NoMatchingRule),
        "a pin does not allow a name"
    );
    let b = p
        .check_host(&Host::parse("allowed.test").unwrap(), 80)
        .unwrap();
    assert!(
        matches!(
            p.check_addrs(b.addrs.as_deref().unwrap(), 80, true, &HashSet::new()),
            Err(Denial::DenyCidr { .. })
        ),
        "deny CIDR still applies to pins"
    );
    let unpinned = p.check_host(&Host::parse("allowed.test").unwrap(), 8443);
    assert!(unpinned.is_err(), "port 8443 is not allowed at all");
}

#[test]
fn many_rules_match_the_first_written() {
    let mut b = Policy::builder();
    for i in 0..10_000 {
        b = b.allow(format!("host{i}.example.test"));
    }
    let p = b.allow("*.wild.test").build().unwrap();
    assert_eq!(
        check(&p, "host9999.example.test", 443).unwrap(),
        "host9999.example.test"
    );
    assert_eq!(check(&p, "x.y.wild.test", 443).unwrap(), "*.wild.test");
    assert!(check(&p, "host10000.example.test", 443).is_err());
}
