//! HTTP rules: which requests an allowed host may be asked.
//!
//! `GET api.github.test /repos/acme/**` (CLI and files) or
//! `allow_http("GET", "api.github.test", "/repos/acme/**")`: a method (`*`
//! for any, or several joined with `,`), a host rule (the allow-rule syntax,
//! ports included) and a path glob (`*` within one segment, `**` across
//! segments; the query is not part of the path). A host that any HTTP rule
//! names is allowed for the requests those rules describe and no others;
//! hosts no HTTP rule names are not narrowed.
//!
//! Paths are matched as sent, so a path another parser could read as a
//! different one (a `.` or `..` segment, an encoded `/`, `\` or `.`, a
//! backslash) is refused rather than guessed at.

use globset::{GlobBuilder, GlobMatcher};

use super::rule::{self, HostRule, RuleError};

/// One validated HTTP rule.
#[derive(Debug, Clone)]
pub struct HttpRule {
    /// The rule as written (`GET api.github.test /repos/acme/**`).
    pub text: String,
    /// Upper-case methods; empty for any.
    pub methods: Vec<String>,
    /// The host rule.
    pub host: HostRule,
    path: GlobMatcher,
}

impl HttpRule {
    /// Parses `METHOD HOST PATH` (whitespace separated).
    ///
    /// # Errors
    /// A message naming the rule and what is wrong with it.
    pub fn parse(text: &str) -> Result<HttpRule, RuleError> {
        let parts: Vec<&str> = text.split_whitespace().collect();
        let [method, host, path] = parts[..] else {
            return Err(bad(
                text,
                "an HTTP rule is METHOD HOST PATH, for example \"GET api.github.com /repos/acme/**\"",
            ));
        };
        HttpRule::new(method, host, path)
    }

    /// Builds a rule from its three parts.
    ///
    /// # Errors
    /// A message naming the rule and what is wrong with it.
    pub fn new(method: &str, host: &str, path: &str) -> Result<HttpRule, RuleError> {
        let text = format!("{method} {host} {path}");
        let methods = if method == "*" {
            Vec::new()
        } else {
            method
                .split(',')
                .map(|m| {
                    let m = m.trim();
                    if m.is_empty() || !m.bytes().all(|b| b.is_ascii_alphabetic()) {
                        Err(bad(&text, format!("{m:?} is not an HTTP method (or *)")))
                    } else {
                        Ok(m.to_ascii_uppercase())
                    }
                })
                .collect::<Result<_, _>>()?
        };
        let host = rule::parse_host_rule(host).map_err(|e| bad(&text, e.reason))?;
        if !path.starts_with('/') {
            return Err(bad(&text, format!("the path {path:?} must start with /")));
        }
        if path.contains('?') || path.contains('#') {
            return Err(bad(
                &text,
                "the path glob matches the path only; leave out the query",
            ));
        }
        let glob = GlobBuilder::new(path)
            .literal_separator(true)
            .build()
            .map_err(|e| bad(&text, format!("bad path glob: {e}")))?;
        Ok(HttpRule {
            text,
            methods,
            host,
            path: glob.compile_matcher(),
        })
    }

    /// Whether the rule's host rule covers `name` on `port`.
    pub fn covers_host(&self, name: &str, port: u16) -> bool {
        self.host.matches(name, port)
    }

    /// Whether the rule allows `method` on `path` (the host already matched).
    pub fn allows(&self, method: &str, path: &str) -> bool {
        (self.methods.is_empty() || self.methods.iter().any(|m| m == method))
            && self.path.is_match(path)
    }
}

/// Why a request was refused by the HTTP rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpDenial {
    /// The host has HTTP rules and none allows this method and path.
    NoMatchingRule {
        /// The rules that name the host, as written.
        rules: Vec<String>,
    },
    /// A path that parsers could read differently.
    AmbiguousPath,
}

impl std::fmt::Display for HttpDenial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HttpDenial::NoMatchingRule { rules } => {
                write!(f, "no-matching-http-rule; allowed={}", rules.join(" | "))
            }
            HttpDenial::AmbiguousPath => f.write_str("malformed; error=ambiguous path"),
        }
    }
}

/// Refuses a path that another parser could read as a different one.
pub(crate) fn check_path(path: &str) -> Result<(), HttpDenial> {
    let lower = path.to_ascii_lowercase();
    let ambiguous = !path.starts_with('/')
        || path.contains('\\')
        || ["%2f", "%5c", "%2e", "%00"]
            .iter()
            .any(|e| lower.contains(e))
        || path.split('/').any(|seg| seg == "." || seg == "..");
    if ambiguous {
        Err(HttpDenial::AmbiguousPath)
    } else {
        Ok(())
    }
}

/// Checks one request against `rules`: `Ok(None)` when no rule names the
/// host, `Ok(Some(rule))` for the first rule that allows it.
pub(crate) fn check<'a>(
    rules: &'a [HttpRule],
    name: &str,
    port: u16,
    method: &str,
    path: &str,
) -> Result<Option<&'a HttpRule>, HttpDenial> {
    let mut named = rules
        .iter()
        .filter(|r| r.covers_host(name, port))
        .peekable();
    if named.peek().is_none() {
        return Ok(None);
    }
    check_path(path)?;
    let named: Vec<&HttpRule> = named.collect();
    named
        .iter()
        .find(|r| r.allows(method, path))
        .map(|r| Some(*r))
        .ok_or_else(|| HttpDenial::NoMatchingRule {
            rules: named.iter().map(|r| r.text.clone()).collect(),
        })
}

fn bad(text: &str, reason: impl Into<String>) -> RuleError {
    RuleError {
        rule: text.to_owned(),
        reason: reason.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_narrow_the_hosts_they_name() {
        let rules = vec![
            HttpRule::parse("GET api.github.test /repos/acme/**").unwrap(),
            HttpRule::parse("GET,HEAD .files.test /*").unwrap(),
        ];
        let c = |n: &str, m: &str, p: &str| check(&rules, n, 443, m, p);
        assert!(c("api.github.test", "GET", "/repos/acme/x")
            .unwrap()
            .is_some());
        assert!(c("api.github.test", "GET", "/repos/acme/x/pulls/1")
            .unwrap()
            .is_some());
        assert!(matches!(
            c("api.github.test", "DELETE", "/repos/acme/x"),
            Err(HttpDenial::NoMatchingRule { .. })
        ));
        assert!(c("api.github.test", "GET", "/repos/other/x").is_err());
        assert!(
            c("api.github.test", "get", "/repos/acme/x").is_err(),
            "methods are case-sensitive"
        );
        // `*` stays within a segment.
        assert!(c("cdn.files.test", "HEAD", "/a").unwrap().is_some());
        assert!(c("cdn.files.test", "HEAD", "/a/b").is_err());
        // Hosts no rule names are not narrowed; ports follow the host rule.
        assert!(c("other.test", "DELETE", "/anything").unwrap().is_none());
        assert!(check(&rules, "api.github.test", 8443, "DELETE", "/")
            .unwrap()
            .is_none());
        let e = c("api.github.test", "POST", "/").unwrap_err().to_string();
        assert!(e.contains("GET api.github.test /repos/acme/**"), "{e}");
    }

    #[test]
    fn ambiguous_paths_are_refused_not_normalised() {
        let rules = vec![HttpRule::parse("* api.github.test /repos/acme/**").unwrap()];
        for p in [
            "/repos/acme/../../orgs/x",
            "/repos/acme/./x",
            "/repos/acme%2f..%2forgs",
            "/repos/acme/%2E%2E/x",
            "/repos/acme\\..\\x",
            "/repos/acme/x%00",
        ] {
            assert_eq!(
                check(&rules, "api.github.test", 443, "GET", p).unwrap_err(),
                HttpDenial::AmbiguousPath,
                "{p}"
            );
        }
    }

    #[test]
    fn malformed_rules_name_the_problem() {
        for (text, says) in [
            ("GET api.github.test", "METHOD HOST PATH"),
            ("G3T api.github.test /", "not an HTTP method"),
            ("GET *.com /", "public suffix"),
            ("GET api.github.test repos", "must start with /"),
            ("GET api.github.test /a?b=1", "query"),
            ("GET api.github.test /[", "glob"),
        ] {
            let e = HttpRule::parse(text).unwrap_err();
            assert!(e.to_string().contains(says), "{text}: {e}");
        }
    }
}
