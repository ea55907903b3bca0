//! The network policy: which destinations a sandbox may reach.
//!
//! Pure: no I/O. The proxy asks two questions, in this order:
//! 1. [`Policy::check_host`] before any DNS lookup (a denied name is never
//!    looked up; a query is itself a leak);
//! 2. [`Policy::check_addrs`] on every address the name resolved to, before
//!    dialling the checked address.
//!
//! # Rule syntax
//!
//! | rule | matches |
//! |---|---|
//! | `github.com` | exactly that host |
//! | `*.github.com` | any subdomain at any depth, not the apex |
//! | `.github.com` | the apex and every subdomain |
//! | `github.com:22`, `github.com:*` | that port, any port (default: 80 and 443) |
//! | deny rules | win over allow rules; without a port they cover every port |
//! | `allow_cidr("10.0.0.0/8")` | the only way to reach an IP literal or a special-range address (default ports 80 and 443; `10.0.0.0/8:5432`, `::1/128:*`) |
//! | `resolve("a.test", 443, "127.0.0.1")` | pins a name and port to an address, like curl's `--resolve`; exempt from the special-range check |
//!
//! No rule, no access. A malformed rule is an error at [`PolicyBuilder::build`].
//!
//! # Examples
//! ```
//! use agent_sandbox::policy::{Policy, Host};
//! let policy = Policy::builder()
//!     .allow(".github.com")
//!     .deny("gist.github.com")
//!     .build()
//!     .unwrap();
//! let host = |s: &str| Host::parse(s).unwrap();
//! assert!(policy.check_host(&host("api.github.com"), 443).is_ok());
//! assert!(policy.check_host(&host("GitHub.com."), 443).is_ok());
//! assert!(policy.check_host(&host("gist.github.com"), 443).is_err());
//! assert!(policy.check_host(&host("github.com"), 22).is_err()); // default ports 80, 443
//! assert!(Policy::builder().allow("*.com").build().is_err());
//! ```

mod addr;
mod file;
mod host;
mod http;
mod rule;

pub use addr::{special_range, Cidr};
pub use file::{preset, presets, Preset};
pub use host::{parse_authority, Host, HostError};
pub use http::{HttpDenial, HttpRule};
pub use rule::{CidrRule, HostRule, Ports, RuleError, Scope};

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::IpAddr;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use serde_json::{json, Value};

use crate::intercept::SecretSpec;

/// Collects rules; validates them all at [`build`](PolicyBuilder::build).
///
/// Defaults: no rules, so nothing is reachable.
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct PolicyBuilder {
    allow: Vec<String>,
    deny: Vec<String>,
    allow_cidr: Vec<String>,
    deny_cidr: Vec<String>,
    resolve: Vec<(String, u16, String)>,
    http: Vec<String>,
    presets: Vec<String>,
    secrets: Vec<SecretSpec>,
}

impl PolicyBuilder {
    /// Allows a host rule (`github.com`, `*.github.com`, `.github.com`, with an
    /// optional `:PORT` or `:*`; default ports 80 and 443).
    pub fn allow(mut self, rule: impl Into<String>) -> Self {
        self.allow.push(rule.into());
        self
    }

    /// Denies a host rule; deny wins over allow. Without a port, every port.
    pub fn deny(mut self, rule: impl Into<String>) -> Self {
        self.deny.push(rule.into());
        self
    }

    /// Allows a network (`10.0.0.0/8`, `::1/128`, optional `:PORT`/`:*` after
    /// the prefix): the only way to reach IP literals and special ranges.
    pub fn allow_cidr(mut self, cidr: impl Into<String>) -> Self {
        self.allow_cidr.push(cidr.into());
        self
    }

    /// Denies a network; wins over everything, pins included.
    pub fn deny_cidr(mut self, cidr: impl Into<String>) -> Self {
        self.deny_cidr.push(cidr.into());
        self
    }

    /// Pins `name:port` to `addr` (like curl's `--resolve`). The name must
    /// still be allowed by a rule; the address is the caller's explicit
    /// choice, so it is exempt from the special-range check.
    pub fn resolve(mut self, name: impl Into<String>, port: u16, addr: impl Into<String>) -> Self {
        self.resolve.push((name.into(), port, addr.into()));
        self
    }

    /// Allows requests to a host by method and path: `method` (`GET`,
    /// `GET,HEAD`, or `*`), a host rule, and a path glob (`*` within a
    /// segment, `**` across). The host is allowed for the requests its HTTP
    /// rules describe and no others; the proxy sees them by intercepting
    /// TLS for that host (see the README: secrets and HTTP rules).
    pub fn allow_http(
        mut self,
        method: impl AsRef<str>,
        host: impl AsRef<str>,
        path: impl AsRef<str>,
    ) -> Self {
        self.http.push(format!(
            "{} {} {}",
            method.as_ref(),
            host.as_ref(),
            path.as_ref()
        ));
        self
    }

    /// [`allow_http`](Self::allow_http) from its text form,
    /// `METHOD HOST PATH` (`GET api.github.com /repos/acme/**`).
    pub fn allow_http_rule(mut self, rule: impl Into<String>) -> Self {
        self.http.push(rule.into());
        self
    }

    /// Removes every allow, deny, allow-CIDR or deny-CIDR rule written
    /// exactly as `rule` (for sessions whose policy changes while they run).
    pub fn remove(mut self, rule: &str) -> Self {
        for list in [
            &mut self.allow,
            &mut self.deny,
            &mut self.allow_cidr,
            &mut self.deny_cidr,
            &mut self.http,
            &mut self.presets,
        ] {
            list.retain(|r| r != rule);
        }
        self
    }

    /// Adds every rule, preset and secret of `other` after this one's.
    pub fn extend(mut self, other: PolicyBuilder) -> Self {
        self.allow.extend(other.allow);
        self.deny.extend(other.deny);
        self.allow_cidr.extend(other.allow_cidr);
        self.deny_cidr.extend(other.deny_cidr);
        self.resolve.extend(other.resolve);
        self.http.extend(other.http);
        self.presets.extend(other.presets);
        self.secrets.extend(other.secrets);
        self
    }

    /// Adds a secret: the sandbox sees a placeholder in the variable
    /// `spec.name`, and the proxy puts the value in requests to the hosts
    /// `spec.host` covers (see the README: secrets and HTTP rules).
    pub fn secret(mut self, spec: SecretSpec) -> Self {
        self.secrets.push(spec);
        self
    }

    /// The secrets added so far.
    #[must_use]
    pub fn secrets(&self) -> &[SecretSpec] {
        &self.secrets
    }

    /// The rules as lists of text, by kind (`allow`, `deny`, `allow_cidr`,
    /// `deny_cidr`, `resolve`, `http`, `preset`), and each secret as
    /// `NAME@HOST` (never its value): what the bindings show as a
    /// sandbox's policy.
    #[must_use]
    pub fn to_json(&self) -> Value {
        let resolve: Vec<String> = self
            .resolve
            .iter()
            .map(|(n, p, a)| format!("{n}:{p}:{a}"))
            .collect();
        let secrets: Vec<String> = self
            .secrets
            .iter()
            .map(|s| format!("{}@{}", s.name, s.host))
            .collect();
        json!({
            "allow": self.allow,
            "deny": self.deny,
            "allow_cidr": self.allow_cidr,
            "deny_cidr": self.deny_cidr,
            "resolve": resolve,
            "http": self.http,
            "preset": self.presets,
            "secret": secrets,
        })
    }

    /// Pins from curl's `HOST:PORT:ADDR` form (`a.test:443:127.0.0.1`,
    /// `a.test:443:[::1]`).
    ///
    /// # Errors
    /// [`RuleError`] when the text is not `HOST:PORT:ADDR`.
    pub fn resolve_spec(self, spec: &str) -> Result<Self, RuleError> {
        let bad = |reason: &str| RuleError {
            rule: spec.to_owned(),
            reason: reason.to_owned(),
        };
        let mut parts = spec.splitn(3, ':');
        let (Some(name), Some(port), Some(addr)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(bad(
                "expected HOST:PORT:ADDR, e.g. allowed.test:443:127.0.0.1",
            ));
        };
        let port = host::parse_port(port).map_err(|_| bad("the port must be 1-65535"))?;
        Ok(self.resolve(name, port, addr))
    }

    /// Validates every rule and compiles the matchers.
    ///
    /// # Errors
    /// The first invalid rule, with a message that names it and says what is
    /// wrong.
    pub fn build(self) -> Result<Policy, RuleError> {
        let http = self
            .http
            .iter()
            .map(|t| HttpRule::parse(t))
            .collect::<Result<Vec<_>, _>>()?;
        // A host an HTTP rule names is allowed (for what its rules allow).
        let mut allowed = self.allow.clone();
        for name in &self.presets {
            allowed.extend(file::preset(name)?.allow.iter().cloned());
        }
        allowed.extend(http.iter().map(|r| r.host.text.clone()));
        let allow = RuleSet::new(&allowed)?;
        let deny = RuleSet::new(&self.deny)?;
        let allow_cidr = self
            .allow_cidr
            .iter()
            .map(|c| rule::parse_cidr_rule(c))
            .collect::<Result<_, _>>()?;
        let deny_cidr = self
            .deny_cidr
            .iter()
            .map(|c| rule::parse_cidr_rule(c))
            .collect::<Result<_, _>>()?;
        let mut pins: HashMap<(String, u16), Vec<IpAddr>> = HashMap::new();
        for (name, port, addr) in &self.resolve {
            let text = format!("{name}:{port}:{addr}");
            let bad = |reason: String| RuleError {
                rule: text.clone(),
                reason,
            };
            let name = host::parse_name(name).map_err(|e| bad(e.to_string()))?;
            let addr_s = addr.trim_start_matches('[').trim_end_matches(']');
            let ip: IpAddr = addr_s
                .parse()
                .map_err(|_| bad(format!("{addr:?} is not an IP address")))?;
            if *port == 0 {
                return Err(bad("the port must be 1-65535".into()));
            }
            pins.entry((name, *port))
                .or_default()
                .push(ip.to_canonical());
        }
        Ok(Policy {
            allow,
            deny,
            allow_cidr,
            deny_cidr,
            pins,
            http,
            source: self,
        })
    }
}

/// Host rules compiled into one [`GlobSet`].
#[derive(Debug, Clone)]
struct RuleSet {
    rules: Vec<HostRule>,
    set: GlobSet,
    /// Glob index to rule index (`.github.com` compiles to two globs).
    owner: Vec<usize>,
}

impl RuleSet {
    fn new(texts: &[String]) -> Result<RuleSet, RuleError> {
        let mut rules = Vec::with_capacity(texts.len());
        let mut builder = GlobSetBuilder::new();
        let mut owner = Vec::new();
        for text in texts {
            let rule = rule::parse_host_rule(text)?;
            let globs: &[String] = &match rule.scope {
                Scope::Exact => vec![rule.name.clone()],
                Scope::Subdomains => vec![format!("*.{}", rule.name)],
                Scope::ApexAndSubdomains => vec![rule.name.clone(), format!("*.{}", rule.name)],
            };
            for g in globs {
                // Names are validated LDH, so they hold no glob metacharacters.
                let glob = GlobBuilder::new(g)
                    .literal_separator(false)
                    .build()
                    .map_err(|e| RuleError {
                        rule: text.clone(),
                        reason: e.to_string(),
                    })?;
                builder.add(glob);
                owner.push(rules.len());
            }
            rules.push(rule);
        }
        let set = builder.build().map_err(|e| RuleError {
            rule: String::new(),
            reason: e.to_string(),
        })?;
        Ok(RuleSet { rules, set, owner })
    }

    /// The first rule (in the order given) that matches `name` on `port`.
    fn find(&self, name: &str, port: u16, default_is_any: bool) -> Option<&HostRule> {
        if self.rules.is_empty() {
            return None;
        }
        self.set
            .matches(name)
            .into_iter()
            .map(|g| self.owner[g])
            .filter(|&r| self.rules[r].ports.covers(port, default_is_any))
            .min()
            .map(|r| &self.rules[r])
    }
}

/// A compiled, immutable policy. Cheap to share behind an `Arc`.
#[derive(Debug, Clone)]
pub struct Policy {
    allow: RuleSet,
    deny: RuleSet,
    allow_cidr: Vec<CidrRule>,
    deny_cidr: Vec<CidrRule>,
    pins: HashMap<(String, u16), Vec<IpAddr>>,
    http: Vec<HttpRule>,
    /// What it was built from (to grow it, and to show it).
    source: PolicyBuilder,
}

/// Why a destination was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Denial {
    /// A deny rule matched.
    DenyRule(String),
    /// No allow rule matched the name and port.
    NoMatchingRule,
    /// An IP literal that no CIDR rule allows.
    IpLiteral(IpAddr),
    /// A resolved address in a special range that no CIDR rule allows.
    SpecialAddress {
        /// The address.
        addr: IpAddr,
        /// The range's name (`loopback`, `link-local`, ...).
        range: &'static str,
    },
    /// A resolved address that belongs to the host running the proxy.
    HostAddress(IpAddr),
    /// A deny CIDR rule matched an address.
    DenyCidr {
        /// The address.
        addr: IpAddr,
        /// The rule as written.
        rule: String,
    },
}

impl Denial {
    /// A short stable code (the first token of the `X-Agent-Sandbox-Denied` header).
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            Denial::DenyRule(_) => "deny-rule",
            Denial::NoMatchingRule => "no-matching-rule",
            Denial::IpLiteral(_) => "ip-literal",
            Denial::SpecialAddress { .. } => "special-address",
            Denial::HostAddress(_) => "host-address",
            Denial::DenyCidr { .. } => "deny-cidr",
        }
    }

    /// The rule that caused the refusal, if a rule did.
    #[must_use]
    pub fn rule(&self) -> Option<&str> {
        match self {
            Denial::DenyRule(r) | Denial::DenyCidr { rule: r, .. } => Some(r),
            _ => None,
        }
    }
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Denial::DenyRule(r) => write!(f, "deny-rule; rule={r}"),
            Denial::NoMatchingRule => f.write_str("no-matching-rule"),
            Denial::IpLiteral(ip) => write!(f, "ip-literal; addr={ip}"),
            Denial::SpecialAddress { addr, range } => {
                write!(f, "special-address; range={range}; addr={addr}")
            }
            Denial::HostAddress(ip) => write!(f, "host-address; addr={ip}"),
            Denial::DenyCidr { addr, rule } => write!(f, "deny-cidr; rule={rule}; addr={addr}"),
        }
    }
}

/// What [`Policy::check_host`] allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowed {
    /// The allow (or CIDR) rule that matched, as written.
    pub rule: String,
    /// Addresses known without a lookup: the IP literal itself, or a pin.
    /// `None` means the name must be resolved.
    pub addrs: Option<Vec<IpAddr>>,
    /// Whether `addrs` came from a `resolve` pin (exempt from range checks).
    pub pinned: bool,
}

impl Policy {
    /// Starts an empty builder.
    pub fn builder() -> PolicyBuilder {
        PolicyBuilder::default()
    }

    /// The ports a sandbox's transparent capture listens on: 80 and 443,
    /// and every port an allow rule names (`git.example.test:22`). A
    /// `host:*` rule adds none (capture cannot listen on every port; such
    /// hosts are reached on other ports through the proxy variables).
    #[must_use]
    pub fn capture_ports(&self) -> Vec<u16> {
        let mut ports = vec![80, 443];
        ports.extend(self.allow.rules.iter().filter_map(|r| match r.ports {
            Ports::One(p) => Some(p),
            Ports::Default | Ports::Any => None,
        }));
        ports.sort_unstable();
        ports.dedup();
        ports
    }

    /// The HTTP rules, in the order given.
    pub fn http_rules(&self) -> &[HttpRule] {
        &self.http
    }

    /// Whether an HTTP rule names `name` on `port` (the proxy must see
    /// inside that host's TLS to apply it).
    pub fn narrows(&self, name: &str, port: u16) -> bool {
        self.http.iter().any(|r| r.covers_host(name, port))
    }

    /// Checks one request against the HTTP rules: `Ok(None)` when none
    /// names the host, else the rule that allows the request.
    ///
    /// # Errors
    /// The [`HttpDenial`] that refuses it.
    pub fn check_http(
        &self,
        name: &str,
        port: u16,
        method: &str,
        path: &str,
    ) -> Result<Option<&HttpRule>, HttpDenial> {
        http::check(&self.http, name, port, method, path)
    }

    /// The rules this policy was built from.
    pub fn rules(&self) -> &PolicyBuilder {
        &self.source
    }

    /// The addresses `name`:`port` is pinned to, if a `resolve` rule pins it.
    #[must_use]
    pub fn pinned(&self, name: &str, port: u16) -> Option<&[IpAddr]> {
        self.pins.get(&(name.to_owned(), port)).map(Vec::as_slice)
    }

    /// A policy that allows nothing.
    #[must_use]
    pub fn deny_all() -> Policy {
        PolicyBuilder::default()
            .build()
            .unwrap_or_else(|_| unreachable!("an empty policy is valid"))
    }

    /// Decides on a destination before any lookup.
    ///
    /// # Errors
    /// The [`Denial`] that refuses it.
    pub fn check_host(&self, host: &Host, port: u16) -> Result<Allowed, Denial> {
        match host {
            Host::Ip(ip) => {
                self.check_deny_cidr(*ip, port)?;
                match self
                    .allow_cidr
                    .iter()
                    .find(|r| r.cidr.contains(*ip) && r.ports.covers(port, false))
                {
                    Some(r) => Ok(Allowed {
                        rule: r.text.clone(),
                        addrs: Some(vec![*ip]),
                        pinned: false,
                    }),
                    None => Err(Denial::IpLiteral(*ip)),
                }
            }
            Host::Name(name) => {
                if let Some(rule) = self.deny.find(name, port, true) {
                    return Err(Denial::DenyRule(rule.text.clone()));
                }
                let rule = self
                    .allow
                    .find(name, port, false)
                    .ok_or(Denial::NoMatchingRule)?;
                let pin = self.pins.get(&(name.clone(), port));
                Ok(Allowed {
                    rule: rule.text.clone(),
                    addrs: pin.cloned(),
                    pinned: pin.is_some(),
                })
            }
        }
    }

    fn check_deny_cidr(&self, ip: IpAddr, port: u16) -> Result<(), Denial> {
        match self
            .deny_cidr
            .iter()
            .find(|r| r.cidr.contains(ip) && r.ports.covers(port, true))
        {
            Some(r) => Err(Denial::DenyCidr {
                addr: ip,
                rule: r.text.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Checks every address a name resolved to. If any one is refused, the
    /// destination is refused (the caller then dials none of them).
    ///
    /// `pinned` addresses skip the special-range and host-address checks;
    /// deny CIDR rules still apply. `host_addrs` are the proxy host's own
    /// addresses.
    ///
    /// # Errors
    /// The [`Denial`] for the first refused address.
    pub fn check_addrs(
        &self,
        addrs: &[IpAddr],
        port: u16,
        pinned: bool,
        host_addrs: &HashSet<IpAddr>,
    ) -> Result<(), Denial> {
        for &raw in addrs {
            let ip = raw.to_canonical();
            self.check_deny_cidr(ip, port)?;
            if pinned {
                continue;
            }
            let cidr_allowed = self
                .allow_cidr
                .iter()
                .any(|r| r.cidr.contains(ip) && r.ports.covers(port, false));
            if cidr_allowed {
                continue;
            }
            if let Some(range) = special_range(ip) {
                return Err(Denial::SpecialAddress { addr: ip, range });
            }
            if host_addrs.contains(&ip) {
                return Err(Denial::HostAddress(ip));
            }
        }
        Ok(())
    }

    /// The allow rules, as written.
    pub fn allow_rules(&self) -> impl Iterator<Item = &str> {
        self.allow.rules.iter().map(|r| r.text.as_str())
    }
}
