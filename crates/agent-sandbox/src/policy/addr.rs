//! Special-purpose address ranges that a sandbox must not reach by default,
//! and CIDR blocks.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An IP network (address plus prefix length), host bits zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `10.0.0.0/8`, `::1/128`, or a bare address (a single host).
    ///
    /// # Errors
    /// A message naming the problem: a bad address, a prefix too long for the
    /// family, or host bits set (`10.0.0.1/8` is ambiguous, so it is refused).
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (addr_s, prefix_s) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr_s
            .parse()
            .map_err(|_| format!("{addr_s:?} is not an IP address"))?;
        let addr = addr.to_canonical();
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix_s {
            None => max,
            Some(p) => {
                if p.is_empty() || p.len() > 3 || !p.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(format!("{p:?} is not a prefix length"));
                }
                let n: u8 = p
                    .parse()
                    .map_err(|_| format!("{p:?} is not a prefix length"))?;
                // An IPv4-mapped network written in IPv6 form keeps its meaning.
                let n = if addr_s.contains(':') && addr.is_ipv4() {
                    n.checked_sub(96).ok_or_else(|| {
                        format!("prefix /{n} is too short for an IPv4-mapped address")
                    })?
                } else {
                    n
                };
                if n > max {
                    return Err(format!("prefix /{n} is longer than {max} bits"));
                }
                n
            }
        };
        let cidr = Cidr { addr, prefix };
        if cidr.network() != addr {
            return Err(format!(
                "host bits are set; did you mean {}/{prefix}?",
                cidr.network()
            ));
        }
        Ok(cidr)
    }

    fn network(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask32(self.prefix))),
            IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask128(self.prefix))),
        }
    }

    /// Whether `ip` (canonicalised) lies in this network.
    #[must_use]
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(n), IpAddr::V4(a)) => in4(a, n, self.prefix),
            (IpAddr::V6(n), IpAddr::V6(a)) => in6(a, n, self.prefix),
            _ => false,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

fn mask32(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    }
}

fn mask128(prefix: u8) -> u128 {
    if prefix == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(prefix))
    }
}

fn in4(a: Ipv4Addr, net: Ipv4Addr, prefix: u8) -> bool {
    u32::from(a) & mask32(prefix) == u32::from(net)
}

fn in6(a: Ipv6Addr, net: Ipv6Addr, prefix: u8) -> bool {
    u128::from(a) & mask128(prefix) == u128::from(net)
}

const V4_SPECIAL: &[([u8; 4], u8, &str)] = &[
    ([0, 0, 0, 0], 8, "this-network"),
    ([10, 0, 0, 0], 8, "private"),
    ([100, 64, 0, 0], 10, "cgnat"),
    ([127, 0, 0, 0], 8, "loopback"),
    ([168, 63, 129, 16], 32, "azure-wireserver"),
    ([169, 254, 0, 0], 16, "link-local"),
    ([172, 16, 0, 0], 12, "private"),
    ([192, 0, 0, 0], 24, "ietf-protocol"),
    ([192, 0, 2, 0], 24, "documentation"),
    ([192, 31, 196, 0], 24, "as112"),
    ([192, 52, 193, 0], 24, "amt"),
    ([192, 88, 99, 0], 24, "6to4-relay"),
    ([192, 168, 0, 0], 16, "private"),
    ([192, 175, 48, 0], 24, "as112"),
    ([198, 18, 0, 0], 15, "benchmarking"),
    ([198, 51, 100, 0], 24, "documentation"),
    ([203, 0, 113, 0], 24, "documentation"),
    ([224, 0, 0, 0], 4, "multicast"),
    ([255, 255, 255, 255], 32, "broadcast"),
    ([240, 0, 0, 0], 4, "reserved"),
];

/// The special range `ip` lies in, if any: loopback, private, link-local
/// (cloud metadata), CGNAT, multicast, documentation, benchmarking, ULA, and
/// the IPv6 wrappers (NAT64, 6to4, Teredo, IPv4-compatible) of any of those.
///
/// # Examples
/// ```
/// use agent_sandbox::policy::special_range;
/// assert_eq!(special_range("169.254.169.254".parse().unwrap()), Some("link-local"));
/// assert_eq!(special_range("::ffff:127.0.0.1".parse().unwrap()), Some("loopback"));
/// assert_eq!(special_range("2002:7f00:1::".parse().unwrap()), Some("6to4-of-special"));
/// ```
#[must_use]
pub fn special_range(ip: IpAddr) -> Option<&'static str> {
    match ip.to_canonical() {
        IpAddr::V4(a) => special_v4(a),
        IpAddr::V6(a) => special_v6(a),
    }
}

fn special_v4(a: Ipv4Addr) -> Option<&'static str> {
    V4_SPECIAL
        .iter()
        .find(|(net, p, _)| in4(a, Ipv4Addr::from(*net), *p))
        .map(|(_, _, name)| *name)
}

fn embedded(a: Ipv6Addr, shift: u32) -> Ipv4Addr {
    Ipv4Addr::from(((u128::from(a) >> shift) & 0xffff_ffff) as u32)
}

fn special_v6(a: Ipv6Addr) -> Option<&'static str> {
    let s = a.segments();
    if a.is_unspecified() {
        return Some("unspecified");
    }
    if a.is_loopback() {
        return Some("loopback");
    }
    // ::/96, IPv4-compatible (deprecated): getaddrinfo users can reach v4 through it.
    if u128::from(a) >> 32 == 0 {
        return Some("ipv4-compatible");
    }
    // 64:ff9b::/96, well-known NAT64 prefix: the embedded v4 address is reached.
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
        return special_v4(embedded(a, 0)).map(|_| "nat64-of-special");
    }
    // 64:ff9b:1::/48, local-use NAT64.
    if s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1 {
        return Some("nat64-local");
    }
    // 2002::/16, 6to4: the v4 address sits in bits 16..48.
    if s[0] == 0x2002 {
        return special_v4(embedded(a, 80)).map(|_| "6to4-of-special");
    }
    // 2001::/32, Teredo: a tunnel whose endpoint is hidden in the address
    // (the client obfuscated); no legitimate destination needs it.
    if s[0] == 0x2001 && s[1] == 0 {
        return Some("teredo");
    }
    let ranges: &[(u16, u16, &str)] = &[
        // (first segment value, mask on first segment, name)
        (0x0100, 0xffff, "discard"), // 100::/64 (checked below for the rest)
        (0xfc00, 0xfe00, "ula"),
        (0xfe80, 0xffc0, "link-local"),
        (0xfec0, 0xffc0, "site-local"),
        (0xff00, 0xff00, "multicast"),
        (0x5f00, 0xff00, "srv6"),
    ];
    for (v, m, name) in ranges {
        if s[0] & m == *v {
            if *name == "discard" && s[1..4] != [0, 0, 0] {
                continue;
            }
            return Some(name);
        }
    }
    // 2001::/23 IETF protocol assignments (benchmarking, ORCHID, AMT, ...), and
    // 2001:db8::/32 and 3fff::/20 documentation.
    if s[0] == 0x2001 && s[1] < 0x0200 {
        return Some("ietf-protocol");
    }
    if s[0] == 0x2001 && s[1] == 0x0db8 || s[0] & 0xfff0 == 0x3ff0 {
        return Some("documentation");
    }
    None
}
