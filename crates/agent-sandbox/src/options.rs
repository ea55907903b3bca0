//! Options as data: the one place a sandbox's and an exec's options are
//! named, typed and parsed. Python keyword arguments, Node option objects,
//! `serve --stdio` requests (as JSON) and the CLI's flags (through clap, with
//! the `clap` feature) all become a [`SandboxOptions`] or an [`ExecOptions`],
//! so an option added here reaches every surface, and every surface refuses
//! an unknown or mistyped option the same way.
//!
//! ```
//! use agent_sandbox::options::{Naming, SandboxOptions};
//!
//! let o = SandboxOptions::from_json(r#"{"allow": ["pypi.org"], "memory": "512m", "timeoutMs": 1500}"#, Naming::Camel)?;
//! assert_eq!(o.timeout.unwrap().0.as_millis(), 1500);
//! let err = SandboxOptions::from_json(r#"{"allow": "pypi.org"}"#, Naming::Snake).unwrap_err();
//! assert_eq!(err.code(), "invalid_argument");
//! assert!(err.to_string().contains("allow"), "{err}");
//! let builder = agent_sandbox::Sandbox::builder().options(o); // .allow("pypi.org")...
//! builder.check()?;
//! # Ok::<(), agent_sandbox::Error>(())
//! ```

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::intercept::SecretSpec;
use crate::policy::PolicyBuilder;
use crate::Error;

/// `--secret NAME=ENVVAR@HOST`, the value read from the caller's environment.
#[cfg(feature = "clap")]
fn parse_secret(s: &str) -> Result<SecretSpec, String> {
    SecretSpec::from_env_spec(s, |k| std::env::var(k).ok())
}

/// A size in bytes: a number, or Docker's text (`512m`, `2g`, `1048576`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u64);

/// A duration: a number of seconds (`1.5`), or text (`500ms`, `2m`, `1h 30m`).
/// Node spells durations as milliseconds (`timeoutMs`), see [`Naming::Camel`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seconds(pub Duration);

/// An environment variable, `KEY=VALUE` as text (a map in JSON).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvVar {
    /// The name.
    pub key: String,
    /// The value.
    pub value: String,
}

/// An extra bind mount: `HOST:TARGET` (read-only), `HOST:TARGET:ro` or
/// `HOST:TARGET:rw`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec {
    /// The host directory.
    pub host: PathBuf,
    /// Where it appears in the sandbox (absolute).
    pub target: String,
    /// Read-only unless `:rw`.
    pub read_only: bool,
}

/// Parses a size as Docker does: bytes, or a number with `b`, `k`, `m`, `g`
/// (binary units, case-insensitive): `512m`, `1g`, `1048576`.
///
/// # Errors
/// [`Error::InvalidArgument`] for anything else.
///
/// # Examples
/// ```
/// assert_eq!(agent_sandbox::parse_size("512m").unwrap(), 512 << 20);
/// assert!(agent_sandbox::parse_size("lots").is_err());
/// ```
pub fn parse_size(s: &str) -> Result<i64, Error> {
    let bad = || {
        Error::invalid(
            "size",
            format!("{s:?} is not a size like 512m, 2g or 1048576"),
        )
    };
    let t = s.trim().to_ascii_lowercase();
    let (num, mult) = match t.char_indices().last() {
        Some((i, 'b')) => (&t[..i], 1i64),
        Some((i, 'k')) => (&t[..i], 1 << 10),
        Some((i, 'm')) => (&t[..i], 1 << 20),
        Some((i, 'g')) => (&t[..i], 1 << 30),
        _ => (t.as_str(), 1),
    };
    let n: f64 = num.parse().map_err(|_| bad())?;
    if !(n.is_finite() && n > 0.0) {
        return Err(bad());
    }
    let v = n * mult as f64;
    if v > i64::MAX as f64 {
        return Err(bad());
    }
    Ok(v as i64)
}

impl FromStr for Size {
    type Err = Error;
    fn from_str(s: &str) -> Result<Size, Error> {
        parse_size(s).map(|n| Size(n.unsigned_abs()))
    }
}

impl Size {
    fn from_number(n: f64) -> Result<Size, String> {
        if n.is_finite() && n >= 0.0 && n.fract() == 0.0 && n <= i64::MAX as f64 {
            Ok(Size(n as u64))
        } else {
            Err(format!("{n} is not a number of bytes"))
        }
    }

    /// As `usize` (saturating).
    #[must_use]
    pub fn as_usize(self) -> usize {
        usize::try_from(self.0).unwrap_or(usize::MAX)
    }
}

impl FromStr for Seconds {
    type Err = Error;
    fn from_str(s: &str) -> Result<Seconds, Error> {
        let bad = |why: String| Error::invalid("duration", why);
        match s.trim().parse::<f64>() {
            Ok(n) => Seconds::from_number(n).map_err(bad),
            Err(_) => humantime::parse_duration(s.trim())
                .map(Seconds)
                .map_err(|_| bad(format!("{s:?} is not a duration like 30, 1.5, 500ms or 2m"))),
        }
    }
}

impl Seconds {
    fn from_number(n: f64) -> Result<Seconds, String> {
        Duration::try_from_secs_f64(n)
            .map(Seconds)
            .map_err(|_| format!("{n} is not a number of seconds (>= 0)"))
    }
}

impl FromStr for EnvVar {
    type Err = Error;
    fn from_str(s: &str) -> Result<EnvVar, Error> {
        let (key, value) = s
            .split_once('=')
            .ok_or_else(|| Error::invalid("environment variable", format!("{s:?} is not K=V")))?;
        Ok(EnvVar {
            key: key.into(),
            value: value.into(),
        })
    }
}

impl FromStr for MountSpec {
    type Err = Error;
    fn from_str(s: &str) -> Result<MountSpec, Error> {
        let (rest, read_only) = match s.rsplit_once(':') {
            Some((rest, "ro")) => (rest, true),
            Some((rest, "rw")) => (rest, false),
            _ => (s, true),
        };
        match rest.rsplit_once(':') {
            Some((host, target)) if !host.is_empty() && !target.is_empty() => Ok(MountSpec {
                host: host.into(),
                target: target.into(),
                read_only,
            }),
            _ => Err(Error::invalid(
                "mount",
                format!("{s:?} is not HOST:TARGET, HOST:TARGET:ro or HOST:TARGET:rw"),
            )),
        }
    }
}

/// Deserializes a value given as a number (through `from_number`) or as
/// text (through its `FromStr`, the same parser the CLI uses).
struct NumberOrText<T>(PhantomData<T>, &'static str, fn(f64) -> Result<T, String>);

impl<T: FromStr<Err = Error>> Visitor<'_> for NumberOrText<T> {
    type Value = T;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.1)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        (self.2)(v as f64).map_err(E::custom)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        (self.2)(v as f64).map_err(E::custom)
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<T, E> {
        (self.2)(v).map_err(E::custom)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        v.parse().map_err(|e: Error| match e {
            Error::InvalidArgument { reason, .. } => E::custom(reason),
            e => E::custom(e),
        })
    }
}

/// `Deserialize` for a type given as a number or as text.
macro_rules! number_or_text {
    ($t:ty, $expecting:literal) => {
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<$t, D::Error> {
                d.deserialize_any(NumberOrText(PhantomData, $expecting, <$t>::from_number))
            }
        }
    };
}
number_or_text!(Size, "a number of bytes or a size like \"512m\"");
number_or_text!(Seconds, "a number of seconds or a duration like \"500ms\"");

impl<'de> Deserialize<'de> for MountSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<MountSpec, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(|e: Error| de::Error::custom(e))
    }
}

/// `secret` entries: `NAME=ENVVAR@HOST` text, or an object with `name`,
/// `host` and `value` (or `env`, a variable of the caller to read).
fn secret_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<SecretSpec>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Entry {
        Text(String),
        Object {
            name: String,
            host: String,
            #[serde(default)]
            value: Option<String>,
            #[serde(default)]
            env: Option<String>,
        },
    }
    let lookup = |k: &str| std::env::var(k).ok();
    Vec::<Entry>::deserialize(d)?
        .into_iter()
        .map(|e| match e {
            Entry::Text(t) => SecretSpec::from_env_spec(&t, lookup),
            Entry::Object {
                name,
                host,
                value: Some(v),
                env: None,
            } => Ok(SecretSpec::new(name, host, v)),
            Entry::Object {
                name,
                host,
                value: None,
                env: Some(var),
            } => SecretSpec::from_env_spec(&format!("{name}={var}@{host}"), lookup),
            Entry::Object { name, .. } => {
                Err(format!("secret {name}: give exactly one of value or env"))
            }
        })
        .collect::<Result<_, _>>()
        .map_err(de::Error::custom)
}

/// `env` is a map in JSON (`{"CI": "1"}`), `K=V` flags on the command line.
fn env_map<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<EnvVar>, D::Error> {
    Ok(BTreeMap::<String, String>::deserialize(d)?
        .into_iter()
        .map(|(key, value)| EnvVar { key, value })
        .collect())
}

/// Text as bytes (`stdin` in JSON; bindings pass bytes directly).
fn text_bytes<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
    Ok(Some(String::deserialize(d)?.into_bytes()))
}

/// Everything a sandbox can be configured with, as data (callbacks and the
/// cancel token are set on the [`SandboxBuilder`](crate::SandboxBuilder)
/// itself, and [`SandboxBuilder::options`](crate::SandboxBuilder::options) applies them). Every field is
/// optional; the defaults are the builder's. Field names are the Python
/// keywords and the JSON keys; Node uses camelCase (durations as `...Ms`),
/// the CLI `--kebab-case` flags (durations in seconds or with a unit).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
#[non_exhaustive]
pub struct SandboxOptions {
    /// Image (default: $AGENT_SANDBOX_IMAGE, else debian:bookworm-slim); used
    /// if present locally, pulled otherwise.
    #[cfg_attr(feature = "clap", arg(long))]
    pub image: Option<String>,
    /// The read-write directory, mounted at /workspace (the CLI's default:
    /// the current directory; elsewhere none, and /workspace is a tmpfs).
    #[cfg_attr(feature = "clap", arg(long, value_name = "DIR"))]
    pub workspace: Option<PathBuf>,
    /// When the workspace is copied to the engine (a remote engine), leave
    /// out what its .gitignore files ignore (a bind mount shows everything).
    #[cfg_attr(feature = "clap", arg(long))]
    pub skip_gitignored: bool,
    /// Allow a host: github.com, *.github.com (subdomains), .github.com (apex
    /// and subdomains), with an optional :PORT or :* (default ports 80 and 443).
    #[cfg_attr(feature = "clap", arg(long, value_name = "RULE"))]
    pub allow: Vec<String>,
    /// Deny a host (same syntax; wins over allow; without a port, every port).
    #[cfg_attr(feature = "clap", arg(long, value_name = "RULE"))]
    pub deny: Vec<String>,
    /// Allow a network: the only way to reach IP literals and private,
    /// loopback or link-local addresses (10.0.0.0/8, 127.0.0.1/32:8080).
    #[cfg_attr(feature = "clap", arg(long, value_name = "CIDR"))]
    pub allow_cidr: Vec<String>,
    /// Deny a network (wins over everything).
    #[cfg_attr(feature = "clap", arg(long, value_name = "CIDR"))]
    pub deny_cidr: Vec<String>,
    /// Allow requests by method and path: "METHOD HOST PATH" (GET api.github.com
    /// /repos/acme/**; method * for any). The host's TLS is intercepted.
    #[cfg_attr(feature = "clap", arg(long, value_name = "RULE"))]
    pub allow_http: Vec<String>,
    /// A secret the sandbox never sees: NAME=ENVVAR@HOST (the value from the
    /// caller's variable ENVVAR; inside, $NAME holds a placeholder the proxy
    /// replaces in requests to HOST). The host's TLS is intercepted.
    #[serde(deserialize_with = "secret_list")]
    #[cfg_attr(feature = "clap", arg(long, value_name = "NAME=ENVVAR@HOST", value_parser = parse_secret))]
    pub secret: Vec<SecretSpec>,
    /// A policy file (TOML: allow, deny, allow_cidr, deny_cidr, resolve,
    /// http, preset, secret; see the README). Rules given here add to it.
    #[cfg_attr(feature = "clap", arg(long = "policy", value_name = "FILE"))]
    pub policy_file: Option<PathBuf>,
    /// Allow a preset's hosts: pypi, npm, crates, github, go, rubygems,
    /// debian, huggingface, openai, anthropic, gemini (`agent-sandbox presets`).
    #[cfg_attr(feature = "clap", arg(long, value_name = "NAME"))]
    pub preset: Vec<String>,
    /// How long a request that matches no rule waits for the ask callback
    /// before it is denied (default 30 s; only with an ask callback).
    #[cfg_attr(feature = "clap", arg(long, value_name = "SECS"))]
    pub ask_timeout: Option<Seconds>,
    /// Extra roots (PEM files) trusted for upstreams of intercepted hosts,
    /// beside the system's (a corporate CA).
    #[cfg_attr(feature = "clap", arg(long, value_name = "FILE"))]
    pub upstream_ca: Vec<PathBuf>,
    /// Pin HOST:PORT to ADDR, like curl's --resolve (the name must still be allowed).
    #[cfg_attr(feature = "clap", arg(long, value_name = "HOST:PORT:ADDR"))]
    pub resolve: Vec<String>,
    /// Environment variables in the sandbox (the CLI: --env K=V, repeatable).
    #[serde(deserialize_with = "env_map")]
    #[cfg_attr(feature = "clap", arg(long, short = 'e', value_name = "K=V"))]
    pub env: Vec<EnvVar>,
    /// Kill the command after this long (default: never; the CLI exits 124).
    #[cfg_attr(feature = "clap", arg(long, value_name = "SECS"))]
    pub timeout: Option<Seconds>,
    /// Memory limit, swap included (default 1g).
    #[cfg_attr(feature = "clap", arg(long, value_name = "SIZE"))]
    pub memory: Option<Size>,
    /// CPU limit (default 1).
    #[cfg_attr(feature = "clap", arg(long))]
    pub cpus: Option<f64>,
    /// Process and thread limit (default 256).
    #[cfg_attr(feature = "clap", arg(long))]
    pub pids: Option<i64>,
    /// Size of the /tmp tmpfs (default 512m).
    #[cfg_attr(feature = "clap", arg(long, value_name = "SIZE"))]
    pub tmp_size: Option<Size>,
    /// Bytes of stdout and of stderr kept in a result (default 16m each;
    /// callbacks still see everything).
    #[cfg_attr(feature = "clap", arg(long, value_name = "SIZE"))]
    pub output_limit: Option<Size>,
    /// Largest file a session's read_file returns (default 64m).
    #[cfg_attr(feature = "clap", arg(long, value_name = "SIZE"))]
    pub file_limit: Option<Size>,
    /// Extra bind mounts, HOST:TARGET[:ro|:rw] (read-only unless :rw).
    #[cfg_attr(feature = "clap", arg(long = "mount", value_name = "HOST:TARGET[:rw]"))]
    pub mounts: Vec<MountSpec>,
    /// Run as UID:GID (default: the caller; for a root caller, the
    /// workspace's owner, never root unless asked with 0:0).
    #[cfg_attr(feature = "clap", arg(long, value_name = "UID:GID"))]
    pub user: Option<String>,
    /// The engine's OCI runtime: runsc runs the sandbox under gVisor
    /// (default: $AGENT_SANDBOX_RUNTIME, else the engine's default).
    #[cfg_attr(feature = "clap", arg(long, value_name = "NAME"))]
    pub runtime: Option<String>,
    /// Close a session after this long with no command running (default
    /// 30 minutes; 0 keeps it until closed).
    #[cfg_attr(feature = "clap", arg(long, value_name = "SECS"))]
    pub idle_timeout: Option<Seconds>,
    /// Connections the sandbox's proxy serves at once (default 1024).
    #[cfg_attr(feature = "clap", arg(long, value_name = "N"))]
    pub max_connections: Option<usize>,
    /// New connections per second the proxy accepts, with bursts of as
    /// many (default 200).
    #[cfg_attr(feature = "clap", arg(long, value_name = "N"))]
    pub connections_per_second: Option<u32>,
}

/// Per-command options of [`SandboxBuilder::run_with`](crate::SandboxBuilder::run_with),
/// [`Session::exec_with`](crate::Session::exec_with) and
/// [`Pool::run_with`](crate::Pool::run_with): what is unset comes from the
/// sandbox (its environment, `/workspace`, its timeout and output limit, no
/// stdin, its callbacks).
#[derive(Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[must_use]
#[non_exhaustive]
pub struct ExecOptions {
    /// Extra environment variables for this command.
    #[serde(deserialize_with = "env_map")]
    pub env: Vec<EnvVar>,
    /// Working directory: relative to `/workspace`, or absolute below it.
    pub workdir: Option<String>,
    /// Kills the command (its whole process group) after this long.
    pub timeout: Option<Seconds>,
    /// Bytes fed to the command's stdin, then EOF (text in JSON).
    #[serde(deserialize_with = "text_bytes")]
    pub stdin: Option<Vec<u8>>,
    /// Bytes of stdout and of stderr kept.
    pub output_limit: Option<Size>,
    #[serde(skip)]
    pub(crate) on_stdout: Option<crate::command::OutputSink>,
    #[serde(skip)]
    pub(crate) on_stderr: Option<crate::command::OutputSink>,
}

impl std::fmt::Debug for ExecOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecOptions")
            .field("env", &self.env)
            .field("workdir", &self.workdir)
            .field("timeout", &self.timeout)
            .field("stdin", &self.stdin.as_ref().map(Vec::len))
            .field("output_limit", &self.output_limit)
            .finish_non_exhaustive()
    }
}

impl ExecOptions {
    /// Defaults, as above.
    pub fn new() -> Self {
        Self::default()
    }
    /// Adds an environment variable for this command.
    pub fn env(mut self, k: impl Into<String>, v: impl Into<String>) -> Self {
        self.env.push(EnvVar {
            key: k.into(),
            value: v.into(),
        });
        self
    }
    /// Working directory: relative to `/workspace`, or absolute below it.
    pub fn workdir(mut self, dir: impl Into<String>) -> Self {
        self.workdir = Some(dir.into());
        self
    }
    /// Kills the command (its whole process group) after this long.
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = Some(Seconds(t));
        self
    }
    /// Bytes fed to the command's stdin (then EOF). Default: empty stdin.
    pub fn stdin(mut self, data: impl Into<Vec<u8>>) -> Self {
        self.stdin = Some(data.into());
        self
    }
    /// Bytes of stdout and of stderr kept.
    pub fn output_limit(mut self, bytes: usize) -> Self {
        self.output_limit = Some(Size(bytes as u64));
        self
    }
    /// Called with each chunk of stdout.
    pub fn on_stdout(mut self, f: impl Fn(&[u8]) + Send + Sync + 'static) -> Self {
        self.on_stdout = Some(std::sync::Arc::new(f));
        self
    }
    /// Called with each chunk of stderr.
    pub fn on_stderr(mut self, f: impl Fn(&[u8]) + Send + Sync + 'static) -> Self {
        self.on_stderr = Some(std::sync::Arc::new(f));
        self
    }
    /// Parses options from a JSON object (see [`SandboxOptions::from_json`]).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming the option.
    pub fn from_json(text: &str, naming: Naming) -> Result<ExecOptions, Error> {
        from_json(text, naming)
    }
    /// The environment as `(key, value)` pairs.
    pub(crate) fn env_pairs(&self) -> Vec<(String, String)> {
        self.env
            .iter()
            .map(|e| (e.key.clone(), e.value.clone()))
            .collect()
    }
}

impl SandboxOptions {
    /// Parses options from a JSON object: `null` means unset; an unknown
    /// option or a value of the wrong type is an error naming the option
    /// as the caller spelled it.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`].
    pub fn from_json(text: &str, naming: Naming) -> Result<SandboxOptions, Error> {
        from_json(text, naming)
    }
}

/// How a surface spells option names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Naming {
    /// `output_limit`, durations in seconds: Python, JSON (`serve`).
    Snake,
    /// `outputLimit`, durations in milliseconds as `timeoutMs`: Node.
    Camel,
}

/// The options that are durations (Node spells them `...Ms`).
const DURATIONS: &[&str] = &["timeout", "idle_timeout", "ask_timeout"];

impl Naming {
    /// An option's name as this surface spells it.
    #[must_use]
    pub fn spell(self, snake: &str) -> String {
        match self {
            Naming::Snake => snake.to_owned(),
            Naming::Camel => {
                let mut out = String::new();
                let mut up = false;
                for c in snake.chars() {
                    match c {
                        '_' => up = true,
                        c if up => {
                            out.extend(c.to_uppercase());
                            up = false;
                        }
                        c => out.push(c),
                    }
                }
                if DURATIONS.contains(&snake) {
                    out.push_str("Ms");
                }
                out
            }
        }
    }
}

/// The field names of an options struct, as serde sees them.
#[must_use]
pub fn names<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    struct Names(&'static [&'static str]);
    impl<'de> Deserializer<'de> for &mut Names {
        type Error = de::value::Error;
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            self.0 = fields;
            Err(de::Error::custom("names only"))
        }
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("names only"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
            bytes byte_buf option unit unit_struct newtype_struct seq tuple
            tuple_struct map enum identifier ignored_any
        }
    }
    let mut n = Names(&[]);
    let _ = T::deserialize(&mut n);
    n.0
}

fn from_json<T: for<'de> Deserialize<'de>>(text: &str, naming: Naming) -> Result<T, Error> {
    let known = names::<T>();
    let bad = |name: &str, why: String| Error::invalid(format!("option {name:?}"), why);
    let given: Map<String, Value> = match serde_json::from_str(text) {
        Ok(Value::Object(m)) => m,
        Ok(Value::Null) => Map::new(),
        Ok(_) => return Err(Error::invalid("options", "must be an object")),
        Err(e) => return Err(Error::invalid("options", format!("not JSON: {e}"))),
    };
    let mut snake = Map::new();
    for (key, mut value) in given {
        let Some(&name) = known.iter().find(|n| naming.spell(n) == key) else {
            let hint = known
                .iter()
                .find(|n| naming == Naming::Camel && naming.spell(n) == format!("{key}Ms"))
                .map(|n| format!("; durations are in milliseconds here: {}", naming.spell(n)))
                .unwrap_or_default();
            let all: Vec<String> = known.iter().map(|n| naming.spell(n)).collect();
            return Err(bad(
                &key,
                format!("unknown option{hint} (options: {})", all.join(", ")),
            ));
        };
        if value.is_null() {
            continue;
        }
        if naming == Naming::Camel && DURATIONS.contains(&name) {
            value = match value.as_f64() {
                Some(ms) => Value::from(ms / 1e3),
                None => {
                    return Err(bad(
                        &key,
                        format!("{value} is not a number of milliseconds"),
                    ))
                }
            };
        }
        snake.insert(name.to_owned(), value);
    }
    serde_path_to_error::deserialize(Value::Object(snake)).map_err(|e| {
        let field = e
            .path()
            .iter()
            .next()
            .map(|s| s.to_string())
            .unwrap_or_default();
        let field = field
            .split(['.', '['])
            .next()
            .unwrap_or_default()
            .to_owned();
        bad(&naming.spell(&field), e.into_inner().to_string())
    })
}

/// A change to a running session's rules (new connections follow it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleChange {
    /// Allows a host rule.
    Allow(String),
    /// Denies a host rule.
    Deny(String),
    /// Removes a rule (allow, deny or CIDR) written exactly so.
    Remove(String),
}

impl RuleChange {
    /// `allow`, `deny` or `remove_rule` (`removeRule`) with its rule.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for any other operation.
    pub fn new(op: &str, rule: impl Into<String>) -> Result<RuleChange, Error> {
        let rule = rule.into();
        match op {
            "allow" => Ok(RuleChange::Allow(rule)),
            "deny" => Ok(RuleChange::Deny(rule)),
            "remove_rule" | "removeRule" => Ok(RuleChange::Remove(rule)),
            other => Err(Error::invalid(
                "rule change",
                format!("{other:?} is not allow, deny or remove_rule"),
            )),
        }
    }

    /// The rules after this change.
    pub fn apply(self, rules: PolicyBuilder) -> PolicyBuilder {
        match self {
            RuleChange::Allow(r) => rules.allow(r),
            RuleChange::Deny(r) => rules.deny(r),
            RuleChange::Remove(r) => rules.remove(&r),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_option_is_named_and_durations_exist() {
        let all = names::<SandboxOptions>();
        assert!(all.contains(&"output_limit") && all.len() > 15, "{all:?}");
        assert!(DURATIONS.iter().all(|d| all.contains(d)));
        assert_eq!(Naming::Camel.spell("idle_timeout"), "idleTimeoutMs");
        assert_eq!(Naming::Camel.spell("allow_cidr"), "allowCidr");
        assert_eq!(
            names::<ExecOptions>(),
            ["env", "workdir", "timeout", "stdin", "output_limit"]
        );
    }

    #[test]
    fn unknown_and_mistyped_options_name_the_option() {
        let e = SandboxOptions::from_json(r#"{"timeout": 5}"#, Naming::Camel).unwrap_err();
        assert!(e.to_string().contains("timeoutMs"), "{e}");
        let e = SandboxOptions::from_json(r#"{"allow": "x"}"#, Naming::Snake).unwrap_err();
        assert!(e.to_string().contains("\"allow\""), "{e}");
        let e = SandboxOptions::from_json(r#"{"memory": "lots"}"#, Naming::Snake).unwrap_err();
        assert!(
            e.to_string().contains("\"memory\"") && e.to_string().contains("lots"),
            "{e}"
        );
        let e = SandboxOptions::from_json(r#"{"env": {"A": 1}}"#, Naming::Snake).unwrap_err();
        assert!(e.to_string().contains("\"env\""), "{e}");
        let e = ExecOptions::from_json(r#"{"timeoutMs": -1}"#, Naming::Camel).unwrap_err();
        assert!(e.to_string().contains("timeoutMs"), "{e}");
        assert!(SandboxOptions::from_json("[1]", Naming::Snake).is_err());
    }

    #[test]
    fn values_parse_once_for_every_surface() {
        let o = SandboxOptions::from_json(
            r#"{"memory": 1048576, "tmp_size": "2g", "timeout": "1m", "idle_timeout": 0,
                "env": {"A": "1"}, "mounts": ["/d:/data", "/e:/e:rw"], "image": null}"#,
            Naming::Snake,
        )
        .unwrap();
        assert_eq!(o.memory, Some(Size(1 << 20)));
        assert_eq!(o.tmp_size, Some(Size(2 << 30)));
        assert_eq!(o.timeout, Some(Seconds(Duration::from_secs(60))));
        assert_eq!(o.env, vec!["A=1".parse().unwrap()]);
        assert!(o.mounts[0].read_only && !o.mounts[1].read_only);
        assert_eq!(
            "1.5".parse::<Seconds>().unwrap().0,
            Duration::from_millis(1500)
        );
        assert!("x:".parse::<MountSpec>().is_err() && "-1".parse::<Seconds>().is_err());
        assert!(RuleChange::new("remove", "x").is_err());
        // Docker reads a tmpfs size of 0 as "no limit": refused.
        let zero = SandboxOptions::from_json(r#"{"tmp_size": 0}"#, Naming::Snake).unwrap();
        assert!(crate::Sandbox::builder().options(zero).check().is_err());
    }
}
