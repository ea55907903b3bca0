//! Policy files (TOML) and presets.
//!
//! One format for every surface (`--policy FILE`, `policy_file=`,
//! `policyFile:`, [`PolicyBuilder::from_file`]):
//!
//! ```toml
//! version = 1                         # optional; the only version so far
//! preset = ["pypi", "github@1"]       # named rule sets (`@N` pins a version)
//! allow = ["api.example.test", "git.example.test:22"]
//! deny = ["gist.github.com"]
//! allow_cidr = ["10.1.2.0/24:5432"]
//! deny_cidr = []
//! resolve = ["api.example.test:443:127.0.0.1"]
//! http = ["GET api.github.com /repos/acme/**"]
//! secret = [
//!   "GH_TOKEN=GITHUB_TOKEN@api.github.com",           # NAME=ENVVAR@HOST
//!   { name = "NPM_TOKEN", env = "NPM_TOKEN", host = "registry.npmjs.org" },
//! ]
//! ```
//!
//! A secret names the environment variable its value is read from when
//! the file is loaded: the file never holds a value. Every entry is checked
//! at load, and an error names the file, the line and the entry.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::OnceLock;

use serde::Deserialize;
use toml::Spanned;

use super::http::HttpRule;
use super::rule::{self, RuleError};
use super::PolicyBuilder;
use crate::intercept::SecretSpec;
use crate::Error;

/// The presets' data: one file, a comment per host.
const PRESETS: &str = include_str!("presets.toml");

/// A named, versioned set of allow rules for one ecosystem.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preset {
    /// `pypi`, `npm`, ... (the table's name in the data file).
    #[serde(skip)]
    pub name: String,
    /// Bumped whenever the list changes.
    pub version: u32,
    /// What the preset is for.
    pub description: String,
    /// The allow rules.
    pub allow: Vec<String>,
}

/// Every preset, by name.
///
/// # Examples
/// ```
/// let npm = agent_sandbox::policy::presets().iter().find(|p| p.name == "npm").unwrap();
/// assert!(npm.allow.iter().any(|r| r == "registry.npmjs.org"));
/// ```
pub fn presets() -> &'static [Preset] {
    static ALL: OnceLock<Vec<Preset>> = OnceLock::new();
    ALL.get_or_init(|| {
        let map: BTreeMap<String, Preset> = toml::from_str(PRESETS)
            .unwrap_or_else(|e| unreachable!("presets.toml is checked by a test: {e}"));
        map.into_iter()
            .map(|(name, p)| Preset { name, ..p })
            .collect()
    })
}

/// The preset `spec` names (`npm`, or `npm@1` to pin its version).
///
/// # Errors
/// [`RuleError`] for an unknown name (listing the known ones) or a version
/// the data does not have.
pub fn preset(spec: &str) -> Result<&'static Preset, RuleError> {
    let bad = |reason: String| RuleError {
        rule: format!("preset {spec}"),
        reason,
    };
    let (name, version) = match spec.split_once('@') {
        Some((n, v)) => (
            n,
            Some(v.parse::<u32>().map_err(|_| {
                bad(format!(
                    "{v:?} is not a version number (write {n} or {n}@1)"
                ))
            })?),
        ),
        None => (spec, None),
    };
    let p = presets().iter().find(|p| p.name == name).ok_or_else(|| {
        let known: Vec<&str> = presets().iter().map(|p| p.name.as_str()).collect();
        bad(format!(
            "no such preset; the presets are {}",
            known.join(", ")
        ))
    })?;
    match version {
        Some(v) if v != p.version => Err(bad(format!(
            "this version of agent-sandbox has {name}@{}; review its hosts (`agent-sandbox presets`) and update the pin",
            p.version
        ))),
        _ => Ok(p),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Doc {
    version: Option<Spanned<i64>>,
    #[serde(default)]
    preset: Vec<Spanned<String>>,
    #[serde(default)]
    allow: Vec<Spanned<String>>,
    #[serde(default)]
    deny: Vec<Spanned<String>>,
    #[serde(default)]
    allow_cidr: Vec<Spanned<String>>,
    #[serde(default)]
    deny_cidr: Vec<Spanned<String>>,
    #[serde(default)]
    resolve: Vec<Spanned<String>>,
    #[serde(default)]
    http: Vec<Spanned<String>>,
    #[serde(default)]
    secret: Vec<Spanned<SecretEntry>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum SecretEntry {
    Text(String),
    Table(SecretTable),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretTable {
    name: String,
    /// The environment variable holding the value (default: `name`).
    env: Option<String>,
    host: String,
}

impl PolicyBuilder {
    /// Reads a policy file (see [`crate::policy`]'s file format), reading
    /// each secret's value from the environment variable it names.
    ///
    /// # Examples
    /// ```
    /// # let dir = std::env::temp_dir().join(format!("doc-policy-{}", std::process::id()));
    /// # std::fs::create_dir_all(&dir).unwrap();
    /// let path = dir.join("policy.toml");
    /// std::fs::write(&path, "preset = [\"pypi\"]\nallow = [\"api.example.test\"]\n").unwrap();
    /// let policy = agent_sandbox::policy::PolicyBuilder::from_file(&path).unwrap().build().unwrap();
    /// assert!(policy.allow_rules().any(|r| r == "files.pythonhosted.org"));
    /// std::fs::write(&path, "allow = [\n  \"*.com\",\n]\n").unwrap();
    /// let err = agent_sandbox::policy::PolicyBuilder::from_file(&path).unwrap_err();
    /// assert!(err.to_string().contains("policy.toml:2: \"*.com\""), "{err}");
    /// ```
    ///
    /// # Errors
    /// [`Error::Io`] if the file cannot be read; [`Error::PolicyFile`]
    /// naming the line and the entry for anything invalid in it.
    pub fn from_file(path: impl AsRef<Path>) -> Result<PolicyBuilder, Error> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io("read", path, e))?;
        PolicyBuilder::from_toml(&text, path, |k| std::env::var(k).ok())
    }

    /// [`from_file`](Self::from_file) on text already read; `origin` names
    /// it in errors and `env` looks up secrets' variables.
    ///
    /// # Errors
    /// As [`from_file`](Self::from_file).
    pub fn from_toml(
        text: &str,
        origin: &Path,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<PolicyBuilder, Error> {
        let at = |span: std::ops::Range<usize>, rule: Option<&str>, reason: String| {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            Error::PolicyFile {
                path: origin.to_path_buf(),
                line,
                rule: rule.map(str::to_owned),
                reason,
            }
        };
        let doc: Doc = toml::from_str(text).map_err(|e| {
            at(
                e.span().unwrap_or(0..0),
                None,
                e.message().trim().to_owned(),
            )
        })?;
        if let Some(v) = &doc.version {
            if *v.get_ref() != 1 {
                return Err(at(
                    v.span(),
                    None,
                    format!(
                        "version {} is not known; this agent-sandbox reads version 1",
                        v.get_ref()
                    ),
                ));
            }
        }
        let mut b = PolicyBuilder::default();
        let check = |list: &[Spanned<String>],
                     f: &dyn Fn(&str) -> Result<(), RuleError>|
         -> Result<Vec<String>, Error> {
            list.iter()
                .map(|s| {
                    f(s.get_ref())
                        .map(|()| s.get_ref().clone())
                        .map_err(|e| at(s.span(), Some(s.get_ref()), e.reason))
                })
                .collect()
        };
        let host = |t: &str| rule::parse_host_rule(t).map(drop);
        let cidr = |t: &str| rule::parse_cidr_rule(t).map(drop);
        b.presets = check(&doc.preset, &|t| preset(t).map(drop))?;
        b.allow = check(&doc.allow, &host)?;
        b.deny = check(&doc.deny, &host)?;
        b.allow_cidr = check(&doc.allow_cidr, &cidr)?;
        b.deny_cidr = check(&doc.deny_cidr, &cidr)?;
        b.http = check(&doc.http, &|t| HttpRule::parse(t).map(drop))?;
        for r in &doc.resolve {
            b = b
                .resolve_spec(r.get_ref())
                .and_then(|b| b.clone().build().map(|_| b))
                .map_err(|e| at(r.span(), Some(r.get_ref()), e.reason))?;
        }
        for s in &doc.secret {
            let (spec, shown) = match s.get_ref() {
                SecretEntry::Text(t) => (SecretSpec::from_env_spec(t, &env), t.clone()),
                SecretEntry::Table(t) => {
                    let var = t.env.clone().unwrap_or_else(|| t.name.clone());
                    let shown = format!("{}={var}@{}", t.name, t.host);
                    let spec = env(&var)
                        .map(|v| SecretSpec::new(&t.name, &t.host, v))
                        .ok_or_else(|| {
                            format!("the environment variable {var} is not set (it holds the secret's value)")
                        });
                    (spec, shown)
                }
            };
            let spec = spec.map_err(|reason| at(s.span(), Some(&shown), reason))?;
            crate::intercept::validated(std::slice::from_ref(&spec), "0").map_err(|e| {
                let reason = match e {
                    Error::Policy(r) => r.reason,
                    other => other.to_string(),
                };
                at(s.span(), Some(&shown), reason)
            })?;
            if b.secrets.iter().any(|o| o.name == spec.name) {
                return Err(at(
                    s.span(),
                    Some(&shown),
                    "two secrets with the same name".into(),
                ));
            }
            b.secrets.push(spec);
        }
        Ok(b)
    }

    /// Adds a preset's allow rules (`npm`, or `npm@1` to pin the version):
    /// see [`presets`]. An unknown name is an error at [`build`](Self::build).
    pub fn allow_preset(mut self, name: impl Into<String>) -> Self {
        self.presets.push(name.into());
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<PolicyBuilder, Error> {
        PolicyBuilder::from_toml(text, Path::new("p.toml"), |k| {
            (k == "TOKEN").then(|| "s3cret".to_owned())
        })
    }

    /// Every entry kind loads, and presets expand at build.
    #[test]
    fn a_complete_file_round_trips_into_a_policy() {
        let b = load(
            r#"
version = 1
preset = ["pypi", "github@1"]
allow = ["api.example.test", "git.example.test:22"]
deny = ["gist.github.com"]
allow_cidr = ["10.1.2.0/24:5432"]
deny_cidr = ["10.1.2.3/32"]
resolve = ["api.example.test:443:127.0.0.1"]
http = ["GET api.github.com /repos/acme/**"]
secret = ["GH=TOKEN@api.github.com", { name = "NPM", env = "TOKEN", host = "registry.npmjs.org" }]
"#,
        )
        .unwrap();
        assert_eq!(b.secrets.len(), 2);
        assert!(format!("{b:?}").contains("redacted") && !format!("{b:?}").contains("s3cret"));
        let p = b.build().unwrap();
        let allow: Vec<&str> = p.allow_rules().collect();
        for want in [
            "api.example.test",
            "git.example.test:22",
            "pypi.org",
            "github.com:22",
        ] {
            assert!(allow.contains(&want), "{want} in {allow:?}");
        }
        assert!(p.capture_ports().contains(&22));
        assert_eq!(p.http_rules().len(), 1);
    }

    /// Each class of error names the file, the line and the entry.
    #[test]
    fn every_error_names_the_file_line_and_entry() {
        let cases: &[(&str, usize, Option<&str>, &str)] = &[
            (
                "allow = [\n  \"ok.test\",\n  \"*.com\",\n]",
                3,
                Some("*.com"),
                "",
            ),
            ("deny = [\"a b\"]", 1, Some("a b"), ""),
            (
                "\n\nallow_cidr = [\"10.0.0.0/33\"]",
                3,
                Some("10.0.0.0/33"),
                "",
            ),
            ("deny_cidr = [\"nope\"]", 1, Some("nope"), ""),
            (
                "resolve = [\"a.test:443\"]",
                1,
                Some("a.test:443"),
                "HOST:PORT:ADDR",
            ),
            (
                "resolve = [\"a.test:443:nope\"]",
                1,
                Some("a.test:443:nope"),
                "not an IP",
            ),
            (
                "http = [\"GET a.test x\"]",
                1,
                Some("GET a.test x"),
                "must start with /",
            ),
            (
                "preset = [\"nosuch\"]",
                1,
                Some("nosuch"),
                "the presets are",
            ),
            ("preset = [\"npm@7\"]", 1, Some("npm@7"), "npm@1"),
            (
                "secret = [\"X=UNSET@a.test\"]",
                1,
                Some("X=UNSET@a.test"),
                "UNSET",
            ),
            ("secret = [\"oops\"]", 1, Some("oops"), "NAME=ENVVAR@HOST"),
            (
                "secret = [{ name = \"X\", host = \"a.test\" }]",
                1,
                Some("X=X@a.test"),
                "not set",
            ),
            (
                "secret = [\"X=TOKEN@a.test\", \"X=TOKEN@b.test\"]",
                1,
                Some("X=TOKEN@b.test"),
                "same name",
            ),
            ("\nallwo = [\"a.test\"]", 2, None, "unknown field"),
            ("allow = \"a.test\"", 1, None, "sequence"),
            ("allow = [\"a.test\"", 1, None, ""),
            ("version = 2", 1, None, "version 2"),
        ];
        for (text, line, rule, words) in cases {
            let e = load(text).unwrap_err();
            let Error::PolicyFile {
                path,
                line: l,
                rule: r,
                reason,
            } = &e
            else {
                panic!("{text}: {e:?}");
            };
            assert_eq!(path, Path::new("p.toml"));
            assert_eq!((l, r.as_deref()), (line, *rule), "{text}: {e}");
            assert!(reason.contains(words), "{text}: {e}");
            assert!(
                e.to_string().starts_with(&format!("p.toml:{line}: ")),
                "{e}"
            );
            assert_eq!(e.code(), "policy");
        }
    }

    /// The presets' data parses, every preset builds, and every host in
    /// the data file carries a comment saying why it is there.
    #[test]
    fn every_preset_builds_and_every_host_is_explained() {
        let names: Vec<&str> = presets().iter().map(|p| p.name.as_str()).collect();
        for want in [
            "pypi",
            "npm",
            "crates",
            "github",
            "go",
            "rubygems",
            "debian",
            "huggingface",
            "openai",
            "anthropic",
            "gemini",
        ] {
            assert!(names.contains(&want), "{want} missing from {names:?}");
            let p = PolicyBuilder::default().allow_preset(want).build().unwrap();
            assert!(p.allow_rules().count() > 0);
        }
        let mut in_list = false;
        for line in PRESETS.lines() {
            let t = line.trim();
            if t.starts_with("allow = [") {
                in_list = true;
            } else if t == "]" {
                in_list = false;
            } else if in_list {
                assert!(
                    t.starts_with('"') && t.contains("# "),
                    "no reason given: {line}"
                );
            }
        }
        assert!(PolicyBuilder::default()
            .allow_preset("nope")
            .build()
            .is_err());
        assert!(preset("github@1").is_ok());
    }
}
