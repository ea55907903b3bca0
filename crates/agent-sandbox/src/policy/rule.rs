//! Parsing and validating allow/deny rules.

use super::addr::Cidr;
use super::host::{self, HostError};

/// Which ports a rule covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ports {
    /// No port written: 80 and 443 for allow rules, every port for deny rules.
    Default,
    /// `host:PORT`.
    One(u16),
    /// `host:*`.
    Any,
}

impl Ports {
    pub(crate) fn covers(self, port: u16, default_is_any: bool) -> bool {
        match self {
            Ports::Default if default_is_any => true,
            Ports::Default => port == 80 || port == 443,
            Ports::One(p) => p == port,
            Ports::Any => true,
        }
    }
}

/// How a host rule's pattern matches names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// `github.com`: that name only.
    Exact,
    /// `*.github.com`: any subdomain, at any depth, but not the apex.
    Subdomains,
    /// `.github.com`: the apex and every subdomain.
    ApexAndSubdomains,
}

/// A validated host rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRule {
    /// The rule as the caller wrote it (used in audit events and refusals).
    pub text: String,
    /// The canonical base name (`github.com` for all three scopes).
    pub name: String,
    /// How it matches.
    pub scope: Scope,
    /// Which ports it covers.
    pub ports: Ports,
}

impl HostRule {
    /// Parses and validates an allow-rule (`github.com`, `*.github.com`,
    /// `.github.com`, optional `:PORT` or `:*`).
    ///
    /// # Errors
    /// [`RuleError`] naming the rule and the problem.
    pub fn parse(text: &str) -> Result<HostRule, RuleError> {
        parse_host_rule(text)
    }

    /// Whether the rule covers the canonical `name` on `port` (an allow
    /// rule's default ports, 80 and 443, when it names none).
    pub fn matches(&self, name: &str, port: u16) -> bool {
        let sub = name.len() > self.name.len()
            && name.ends_with(self.name.as_str())
            && name.as_bytes()[name.len() - self.name.len() - 1] == b'.';
        let hit = match self.scope {
            Scope::Exact => name == self.name,
            Scope::Subdomains => sub,
            Scope::ApexAndSubdomains => sub || name == self.name,
        };
        hit && self.ports.covers(port, false)
    }
}

/// A validated CIDR rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CidrRule {
    /// The rule as written.
    pub text: String,
    /// The network.
    pub cidr: Cidr,
    /// Which ports it covers.
    pub ports: Ports,
}

/// A rule that failed validation, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid rule {rule:?}: {reason}")]
pub struct RuleError {
    /// The rule as written.
    pub rule: String,
    /// What is wrong with it and what to write instead.
    pub reason: String,
}

fn err(rule: &str, reason: impl Into<String>) -> RuleError {
    RuleError {
        rule: rule.to_owned(),
        reason: reason.into(),
    }
}

fn parse_ports(rule: &str, port: Option<&str>) -> Result<Ports, RuleError> {
    match port {
        None => Ok(Ports::Default),
        Some("*") => Ok(Ports::Any),
        Some(p) => host::parse_port(p)
            .map(Ports::One)
            .map_err(|_| err(rule, format!("{p:?} is not a port (1-65535 or *)"))),
    }
}

/// Parses `github.com`, `*.github.com`, `.github.com`, each with an optional
/// `:PORT` or `:*`.
pub(crate) fn parse_host_rule(text: &str) -> Result<HostRule, RuleError> {
    let trimmed = text;
    if trimmed.trim().is_empty() {
        return Err(err(text, "empty rule"));
    }
    if trimmed.contains("://") || trimmed.contains('/') {
        return Err(err(text, "looks like a URL or a path; write only the host, e.g. github.com or github.com:443 (CIDR blocks go in allow_cidr)"));
    }
    if trimmed == "*" || trimmed == "*:*" || trimmed == "." {
        return Err(err(
            text,
            "matches every host; list the hosts the sandbox needs",
        ));
    }
    let (host_part, port) = match trimmed.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (trimmed, None),
    };
    if host_part.contains([':', '[', ']']) {
        return Err(err(
            text,
            "IP literals are not host rules; use allow_cidr (e.g. ::1/128)",
        ));
    }
    let ports = parse_ports(text, port)?;
    let (scope, base) = if let Some(b) = host_part.strip_prefix("*.") {
        (Scope::Subdomains, b)
    } else if let Some(b) = host_part.strip_prefix('.') {
        (Scope::ApexAndSubdomains, b)
    } else {
        (Scope::Exact, host_part)
    };
    if base.contains('*') {
        return Err(err(
            text,
            "'*' is only allowed as a whole leading label, as in *.github.com",
        ));
    }
    if base.parse::<std::net::Ipv4Addr>().is_ok() {
        return Err(err(
            text,
            "IP literals are not host rules; use allow_cidr (e.g. 10.0.0.1/32)",
        ));
    }
    let name = host::parse_name(base).map_err(|e| match e {
        HostError::NonAscii => err(
            text,
            "non-ASCII name: write it as a punycode A-label (xn--...)",
        ),
        other => err(text, other.to_string()),
    })?;
    if scope != Scope::Exact && is_public_suffix(&name) {
        return Err(err(
            text,
            format!("{name:?} is a public suffix; a wildcard over it would allow unrelated sites"),
        ));
    }
    Ok(HostRule {
        text: text.to_owned(),
        name,
        scope,
        ports,
    })
}

fn is_public_suffix(name: &str) -> bool {
    use psl::{List, Psl};
    match List.suffix(name.as_bytes()) {
        Some(s) => s.as_bytes() == name.as_bytes() && s.typ() != Some(psl::Type::Private),
        None => true,
    }
}

/// Parses `10.0.0.0/8`, `::1/128`, a bare address, each with an optional
/// `:PORT` or `:*` after the prefix (`127.0.0.1/32:8080`, `::1/128:*`).
pub(crate) fn parse_cidr_rule(text: &str) -> Result<CidrRule, RuleError> {
    let trimmed = text;
    if trimmed.trim().is_empty() {
        return Err(err(text, "empty CIDR rule"));
    }
    // A port can only follow the prefix length, which keeps IPv6 unambiguous.
    let (net, port) = match trimmed.split_once('/') {
        Some((addr, rest)) => match rest.split_once(':') {
            Some((prefix, port)) => (format!("{addr}/{prefix}"), Some(port)),
            None => (trimmed.to_owned(), None),
        },
        None => (
            trimmed
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            None,
        ),
    };
    let cidr = Cidr::parse(&net).map_err(|reason| err(text, reason))?;
    let ports = parse_ports(text, port)?;
    Ok(CidrRule {
        text: text.to_owned(),
        cidr,
        ports,
    })
}
