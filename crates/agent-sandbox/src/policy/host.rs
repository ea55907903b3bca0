//! Strict parsing and canonicalisation of hosts and authorities.
//!
//! One canonical string is produced here and used for matching, logging,
//! dialling and the forwarded `Host` header. Anything that a permissive
//! parser (`getaddrinfo`, a browser's URL parser) would read differently is
//! rejected rather than guessed at.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Longest DNS name, without the trailing dot.
const MAX_NAME_LEN: usize = 253;
/// Longest DNS label.
const MAX_LABEL_LEN: usize = 63;

/// A canonical destination host: a lower-case DNS name or an IP address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    /// A validated, lower-case DNS name without a trailing dot (A-labels only).
    Name(String),
    /// An IP literal (IPv4-mapped IPv6 is canonicalised to IPv4).
    Ip(IpAddr),
}

impl Host {
    /// Parses and canonicalises a host as it appears in a request authority.
    ///
    /// IPv6 literals must be bracketed (`[::1]`); IPv4 literals must be strict
    /// dotted quads.
    ///
    /// # Errors
    /// Returns a [`HostError`] naming what is wrong (userinfo, `%`, control
    /// characters, raw non-ASCII, empty or long labels, numeric spellings of
    /// IP addresses that are not dotted quads, and so on).
    ///
    /// # Examples
    /// ```
    /// use agent_sandbox::policy::Host;
    /// assert_eq!(Host::parse("GitHub.COM.").unwrap(), Host::Name("github.com".into()));
    /// assert!(Host::parse("2130706433").is_err()); // 127.0.0.1 to getaddrinfo
    /// ```
    pub fn parse(input: &str) -> Result<Host, HostError> {
        check_chars(input)?;
        if let Some(rest) = input.strip_prefix('[') {
            let inner = rest.strip_suffix(']').ok_or(HostError::BadIpv6)?;
            let ip: Ipv6Addr = inner.parse().map_err(|_| HostError::BadIpv6)?;
            return Ok(Host::Ip(IpAddr::V6(ip).to_canonical()));
        }
        if input.contains(':') {
            // A bare IPv6 literal or a stray port: either way not a host.
            return Err(HostError::InvalidChar(':'));
        }
        if let Ok(v4) = input.parse::<Ipv4Addr>() {
            return Ok(Host::Ip(IpAddr::V4(v4)));
        }
        parse_name(input).map(Host::Name)
    }

    /// The canonical text: the name, a dotted quad, or a bracketed IPv6 literal.
    #[must_use]
    pub fn to_authority_host(&self) -> String {
        match self {
            Host::Name(n) => n.clone(),
            Host::Ip(IpAddr::V4(ip)) => ip.to_string(),
            Host::Ip(IpAddr::V6(ip)) => format!("[{ip}]"),
        }
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_authority_host())
    }
}

/// Why a host or authority was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HostError {
    /// Nothing where a host was expected.
    #[error("empty host")]
    Empty,
    /// `user@host`: credentials in an authority are a classic parser confusion.
    #[error("userinfo ('@') is not allowed in a host")]
    Userinfo,
    /// `%`: percent-encoding or an IPv6 zone id.
    #[error("'%' (percent-encoding or an IPv6 zone id) is not allowed in a host")]
    Percent,
    /// A character outside letters, digits, `-` and `.`.
    #[error("character {0:?} is not allowed in a host")]
    InvalidChar(char),
    /// Raw Unicode: internationalised names must arrive as `xn--` A-labels.
    #[error("non-ASCII host: write internationalised names as punycode A-labels (xn--...)")]
    NonAscii,
    /// `a..b` or a leading dot.
    #[error("empty label in host")]
    EmptyLabel,
    /// A label over 63 bytes.
    #[error("label longer than 63 bytes")]
    LabelTooLong,
    /// A name over 253 bytes.
    #[error("name longer than 253 bytes")]
    NameTooLong,
    /// A label that starts or ends with `-`.
    #[error("label starts or ends with '-'")]
    Hyphen,
    /// The last label is numeric: a spelling of an IP address such as `127.1`,
    /// `2130706433` or `0x7f.1` that `getaddrinfo` would accept.
    #[error("numeric host that is not a dotted-quad IPv4 address (e.g. 127.1, 0x7f000001)")]
    NumericName,
    /// An `xn--` label that is not valid punycode.
    #[error("invalid punycode (xn--) label")]
    BadPunycode,
    /// A bracketed literal that is not a valid IPv6 address.
    #[error("invalid IPv6 literal (it must be bracketed, with no zone id)")]
    BadIpv6,
    /// A port that is not 1..=65535 in plain decimal.
    #[error("invalid port {0:?}")]
    BadPort(String),
    /// `host` without `:port` where one is required (CONNECT).
    #[error("missing port")]
    MissingPort,
}

impl HostError {
    /// A short stable code for headers and audit events.
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            HostError::Empty => "empty-host",
            HostError::Userinfo => "userinfo",
            HostError::Percent => "percent",
            HostError::InvalidChar(_) => "invalid-char",
            HostError::NonAscii => "non-ascii",
            HostError::EmptyLabel => "empty-label",
            HostError::LabelTooLong => "label-too-long",
            HostError::NameTooLong => "name-too-long",
            HostError::Hyphen => "hyphen",
            HostError::NumericName => "numeric-name",
            HostError::BadPunycode => "bad-punycode",
            HostError::BadIpv6 => "bad-ipv6",
            HostError::BadPort(_) => "bad-port",
            HostError::MissingPort => "missing-port",
        }
    }
}

fn check_chars(input: &str) -> Result<(), HostError> {
    if input.is_empty() {
        return Err(HostError::Empty);
    }
    for c in input.chars() {
        match c {
            '@' => return Err(HostError::Userinfo),
            '%' => return Err(HostError::Percent),
            c if !c.is_ascii() => return Err(HostError::NonAscii),
            'a'..='z' | 'A'..='Z' | '0'..='9' | '-' | '.' | '[' | ']' | ':' => {}
            c => return Err(HostError::InvalidChar(c)),
        }
    }
    Ok(())
}

/// Validates a DNS name (LDH labels) and returns it lower-cased, without the
/// trailing dot.
pub(crate) fn parse_name(input: &str) -> Result<String, HostError> {
    check_chars(input)?;
    if input.contains(['[', ']', ':']) {
        return Err(HostError::InvalidChar(
            input
                .chars()
                .find(|c| matches!(c, '[' | ']' | ':'))
                .unwrap_or(':'),
        ));
    }
    let name = input
        .strip_suffix('.')
        .unwrap_or(input)
        .to_ascii_lowercase();
    if name.is_empty() {
        return Err(HostError::EmptyLabel);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(HostError::NameTooLong);
    }
    let mut last = "";
    for label in name.split('.') {
        if label.is_empty() {
            return Err(HostError::EmptyLabel);
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(HostError::LabelTooLong);
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(HostError::Hyphen);
        }
        last = label;
    }
    if is_numeric_label(last) {
        return Err(HostError::NumericName);
    }
    if name.split('.').any(|l| l.starts_with("xn--")) {
        // A-labels must round-trip: decoding and re-encoding gives the same name.
        match idna::domain_to_ascii_strict(&name) {
            Ok(ascii) if ascii == name => {}
            _ => return Err(HostError::BadPunycode),
        }
    }
    Ok(name)
}

/// The WHATWG "ends in a number" test: all digits, or `0x` and hex digits.
fn is_numeric_label(label: &str) -> bool {
    if label.bytes().all(|b| b.is_ascii_digit()) {
        return true;
    }
    match label.strip_prefix("0x") {
        Some(hex) => hex.bytes().all(|b| b.is_ascii_hexdigit()),
        None => false,
    }
}

/// Parses a port in plain decimal, 1..=65535, no sign, no leading zeros.
pub(crate) fn parse_port(s: &str) -> Result<u16, HostError> {
    let bad = || HostError::BadPort(s.chars().take(16).collect());
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) || s.starts_with('0') {
        return Err(bad());
    }
    match s.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(bad()),
    }
}

/// Splits `host[:port]` where the host may be a bracketed IPv6 literal.
/// Returns the host text and the port text, if any.
pub(crate) fn split_host_port(input: &str) -> Result<(&str, Option<&str>), HostError> {
    if input.starts_with('[') {
        let end = input.find(']').ok_or(HostError::BadIpv6)?;
        let (host, rest) = input.split_at(end + 1);
        return match rest {
            "" => Ok((host, None)),
            _ => match rest.strip_prefix(':') {
                Some(port) => Ok((host, Some(port))),
                None => Err(HostError::BadIpv6),
            },
        };
    }
    match input.rsplit_once(':') {
        Some((host, port)) => Ok((host, Some(port))),
        None => Ok((input, None)),
    }
}

/// Parses an authority `host:port` (as in a CONNECT request or an absolute
/// URI). `default_port` is used when the port is absent; with `None` a port
/// is required.
///
/// # Errors
/// Any [`HostError`]; userinfo is refused, never stripped.
///
/// # Examples
/// ```
/// use agent_sandbox::policy::{parse_authority, Host};
/// let (h, p) = parse_authority("[::ffff:127.0.0.1]:443", None).unwrap();
/// assert_eq!((h, p), (Host::Ip("127.0.0.1".parse().unwrap()), 443));
/// assert!(parse_authority("user@github.com:443", None).is_err());
/// ```
pub fn parse_authority(input: &str, default_port: Option<u16>) -> Result<(Host, u16), HostError> {
    check_chars(input)?;
    let (host, port) = split_host_port(input)?;
    let port = match (port, default_port) {
        (Some(p), _) => parse_port(p)?,
        (None, Some(d)) => d,
        (None, None) => return Err(HostError::MissingPort),
    };
    Ok((Host::parse(host)?, port))
}
