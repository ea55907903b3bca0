//! Secrets: a value the sandbox never sees. The sandbox gets a placeholder
//! in the environment variable of the secret's name; the proxy puts the
//! value in place of the placeholder in the headers (basic-auth included)
//! and the query of requests to hosts the secret's rule covers, and refuses
//! a request that carries a placeholder anywhere else it can see.
//!
//! Pure: no I/O.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hyper::header::{HeaderMap, HeaderValue, AUTHORIZATION};

use crate::policy::{HostRule, RuleError};

/// Every placeholder starts with this, so a scan looks for one marker.
pub(crate) const MARKER: &str = "agent-sandbox-secret-";

/// A secret's value: never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue(String);

impl SecretValue {
    /// Wraps `value`.
    pub fn new(value: impl Into<String>) -> SecretValue {
        SecretValue(value.into())
    }

    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

/// A secret as the caller gives it: the environment variable name the
/// sandbox sees, the host rule it may be sent to, and the value.
///
/// As text (the CLI's `--secret`, a string in JSON): `NAME=ENVVAR@HOST`,
/// the value read from the caller's environment variable `ENVVAR` when
/// parsed. In JSON also `{"name": ..., "host": ..., "value": ...}` or
/// `{"name": ..., "host": ..., "env": "ENVVAR"}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretSpec {
    /// The environment variable that holds the placeholder inside.
    pub name: String,
    /// The host rule (allow-rule syntax) whose requests get the value.
    pub host: String,
    /// The value (never printed).
    pub value: SecretValue,
}

impl SecretSpec {
    /// A secret named `name` (the variable inside) for `host` (a host rule).
    pub fn new(name: impl Into<String>, host: impl Into<String>, value: impl Into<String>) -> Self {
        SecretSpec {
            name: name.into(),
            host: host.into(),
            value: SecretValue::new(value),
        }
    }

    /// Parses `NAME=ENVVAR@HOST`, reading the value from `lookup(ENVVAR)`.
    ///
    /// # Errors
    /// A message saying what is malformed or which variable is unset.
    pub fn from_env_spec(
        text: &str,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<SecretSpec, String> {
        let form =
            "a secret is NAME=ENVVAR@HOST, for example GH_TOKEN=GITHUB_TOKEN@api.github.com \
                    (the value is read from the environment variable ENVVAR)";
        let (name, rest) = text
            .split_once('=')
            .ok_or_else(|| format!("{text:?}: {form}"))?;
        let (var, host) = rest
            .split_once('@')
            .ok_or_else(|| format!("{text:?}: {form}"))?;
        if name.is_empty() || var.is_empty() || host.is_empty() {
            return Err(format!("{text:?}: {form}"));
        }
        let value = lookup(var)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| format!("secret {name}: the environment variable {var} is not set"))?;
        Ok(SecretSpec::new(name, host, value))
    }
}

/// A validated secret with its placeholder.
#[derive(Clone, Debug)]
pub(crate) struct Secret {
    pub(crate) name: String,
    pub(crate) rule: HostRule,
    pub(crate) value: SecretValue,
    pub(crate) placeholder: String,
}

impl Secret {
    /// Validates `spec` and gives it a placeholder unique to this sandbox
    /// (`nonce` is random hex).
    pub(crate) fn new(spec: &SecretSpec, nonce: &str) -> Result<Secret, RuleError> {
        let bad = |reason: String| RuleError {
            rule: format!("secret {}", spec.name),
            reason,
        };
        let name = &spec.name;
        let valid_name = name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !valid_name {
            return Err(bad(format!(
                "{name:?} is not an environment variable name (letters, digits, _)"
            )));
        }
        let rule = crate::policy::HostRule::parse(&spec.host).map_err(|e| bad(e.to_string()))?;
        let value = spec.value.expose();
        if value.is_empty() {
            return Err(bad("the value is empty".into()));
        }
        if !value.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            return Err(bad(
                "the value must be printable ASCII (it goes into HTTP headers)".into(),
            ));
        }
        Ok(Secret {
            name: name.clone(),
            rule,
            value: spec.value.clone(),
            placeholder: format!(
                "{MARKER}{}-{nonce}",
                name.to_ascii_lowercase().replace('_', "-")
            ),
        })
    }
}

/// What a request's placeholders mean for it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Scan {
    /// No placeholder.
    Clean,
    /// Placeholders of these secrets, all meant for this host.
    ForHost(Vec<String>),
    /// A placeholder of this secret, which is not meant for this host.
    Misdirected(String),
}

/// Finds the placeholders in `headers` (and decoded basic-auth) and
/// `query_and_path`, and whether each secret's rule covers `name`:`port`.
pub(crate) fn scan(
    secrets: &[Secret],
    headers: &HeaderMap,
    path_and_query: &str,
    name: &str,
    port: u16,
) -> Scan {
    let mut texts: Vec<String> = vec![path_and_query.to_owned()];
    for v in headers.values() {
        texts.push(String::from_utf8_lossy(v.as_bytes()).into_owned());
    }
    for v in headers.get_all(AUTHORIZATION) {
        if let Some(decoded) = basic_decoded(v) {
            texts.push(decoded);
        }
    }
    if !texts.iter().any(|t| t.contains(MARKER)) {
        return Scan::Clean;
    }
    let mut used = Vec::new();
    for s in secrets {
        if texts.iter().any(|t| t.contains(&s.placeholder)) {
            if !s.rule.matches(name, port) {
                return Scan::Misdirected(s.name.clone());
            }
            used.push(s.name.clone());
        }
    }
    // A marker with no known placeholder (a guess, another sandbox's) is
    // passed as it is: it is not a secret.
    if used.is_empty() {
        Scan::Clean
    } else {
        Scan::ForHost(used)
    }
}

/// Puts the values in place of the placeholders of `names` in `headers`
/// (basic-auth re-encoded) and returns the new path and query.
pub(crate) fn substitute(
    secrets: &[Secret],
    names: &[String],
    headers: &mut HeaderMap,
    path_and_query: &str,
) -> String {
    let chosen: Vec<&Secret> = secrets.iter().filter(|s| names.contains(&s.name)).collect();
    let replace = |text: &str| {
        chosen.iter().fold(text.to_owned(), |t, s| {
            t.replace(&s.placeholder, s.value.expose())
        })
    };
    let keys: Vec<_> = headers.keys().cloned().collect();
    for key in keys {
        let values: Vec<HeaderValue> = headers
            .get_all(&key)
            .iter()
            .map(|v| {
                let decoded = (key == AUTHORIZATION).then(|| basic_decoded(v)).flatten();
                let text = String::from_utf8_lossy(v.as_bytes());
                let new = match decoded {
                    Some(d) if d.contains(MARKER) => {
                        format!("Basic {}", STANDARD.encode(replace(&d)))
                    }
                    _ if text.contains(MARKER) => replace(&text),
                    _ => return v.clone(),
                };
                HeaderValue::from_str(&new).unwrap_or_else(|_| v.clone())
            })
            .collect();
        headers.remove(&key);
        for v in values {
            headers.append(key.clone(), v);
        }
    }
    replace(path_and_query)
}

fn basic_decoded(v: &HeaderValue) -> Option<String> {
    let text = v.to_str().ok()?;
    let (scheme, rest) = text.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let bytes = STANDARD.decode(rest.trim()).ok()?;
    String::from_utf8(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(name: &str, host: &str, value: &str) -> Secret {
        let spec = SecretSpec {
            name: name.into(),
            host: host.into(),
            value: SecretValue::new(value),
        };
        Secret::new(&spec, "0123456789abcdef").unwrap()
    }

    #[test]
    fn placeholders_become_values_for_their_host_only() {
        let gh = secret("GH_TOKEN", "api.github.test", "ghp_real");
        let key = secret("API_KEY", ".model.test", "sk-real");
        let all = vec![gh.clone(), key.clone()];
        let mut h = HeaderMap::new();
        h.insert(
            AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {}", gh.placeholder)).unwrap(),
        );
        h.insert("x-other", HeaderValue::from_static("plain"));
        assert_eq!(
            scan(&all, &h, "/", "api.github.test", 443),
            Scan::ForHost(vec!["GH_TOKEN".into()])
        );
        assert_eq!(
            scan(&all, &h, "/", "evil.test", 443),
            Scan::Misdirected("GH_TOKEN".into())
        );
        let q = format!("/v1?key={}", key.placeholder);
        assert_eq!(
            scan(&all, &HeaderMap::new(), &q, "api.github.test", 443),
            Scan::Misdirected("API_KEY".into())
        );
        let pq = substitute(&all, &["GH_TOKEN".into()], &mut h, "/x");
        assert_eq!(pq, "/x");
        assert_eq!(h[AUTHORIZATION], "Bearer ghp_real");
        assert_eq!(h["x-other"], "plain");
        let pq = substitute(&all, &["API_KEY".into()], &mut HeaderMap::new(), &q);
        assert_eq!(pq, "/v1?key=sk-real");
    }

    #[test]
    fn basic_auth_is_decoded_checked_and_re_encoded() {
        let gh = secret("GH_TOKEN", "git.test", "ghp_real");
        let mut h = HeaderMap::new();
        let creds = STANDARD.encode(format!("x-access-token:{}", gh.placeholder));
        h.insert(
            AUTHORIZATION,
            HeaderValue::from_str(&format!("Basic {creds}")).unwrap(),
        );
        let all = vec![gh];
        assert_eq!(
            scan(&all, &h, "/", "other.test", 443),
            Scan::Misdirected("GH_TOKEN".into())
        );
        assert_eq!(
            scan(&all, &h, "/", "git.test", 443),
            Scan::ForHost(vec!["GH_TOKEN".into()])
        );
        substitute(&all, &["GH_TOKEN".into()], &mut h, "/");
        assert_eq!(
            basic_decoded(&h[AUTHORIZATION]).unwrap(),
            "x-access-token:ghp_real"
        );
    }

    #[test]
    fn bad_secrets_are_refused_and_values_never_printed() {
        let spec = |n: &str, h: &str, v: &str| SecretSpec {
            name: n.into(),
            host: h.into(),
            value: SecretValue::new(v),
        };
        for (s, says) in [
            (spec("1X", "a.test", "v"), "environment variable name"),
            (spec("X-Y", "a.test", "v"), "environment variable name"),
            (spec("X", "*.com", "v"), "public suffix"),
            (spec("X", "a.test", ""), "empty"),
            (spec("X", "a.test", "a\r\nb"), "printable"),
        ] {
            let e = Secret::new(&s, "00").unwrap_err().to_string();
            assert!(e.contains(says), "{e}");
        }
        let s = secret("X", "a.test", "hunter2-value");
        let shown = format!("{s:?} {:?}", spec("X", "a.test", "hunter2-value"));
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("[redacted]"));
    }
}
