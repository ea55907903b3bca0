//! Asking on a miss: a request that matches no rule waits while the host
//! application decides.
//!
//! The proxy asks only for a name that no rule covers (host level), or, on
//! a host narrowed by HTTP rules, for a method and path none allows. It
//! never asks for a deny rule's match, an IP literal, a special-range
//! address or a malformed request: those are refused as before.
//!
//! The callback runs on the host, outside the sandbox; nothing the sandbox
//! can reach (the proxy socket, init's channels, the workspace) can answer
//! it or add a rule. Concurrent misses for the same destination ask once
//! and share the answer. No answer within the timeout, a panic, or an
//! error in a binding's callback is a deny whose reason says so. Each
//! decision's audit event carries the answer (`ask`).
//!
//! # Examples
//! ```no_run
//! use agent_sandbox::ask::AskAnswer;
//! # async fn f() -> Result<(), agent_sandbox::Error> {
//! let out = agent_sandbox::Sandbox::builder()
//!     .on_ask(|req| async move {
//!         if req.host.ends_with(".example.test") {
//!             AskAnswer::AllowSandbox
//!         } else {
//!             AskAnswer::deny(format!("{} is not needed for this task", req.host))
//!         }
//!     })
//!     .run("curl -sS https://api.example.test/")
//!     .await?;
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use tokio::sync::watch;

use crate::proxy::Via;

/// What the proxy tells the callback about a request that matched no rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct AskRequest {
    /// The canonical host name.
    pub host: String,
    /// The destination port.
    pub port: u16,
    /// `CONNECT` for a tunnel, else the request's method.
    pub method: String,
    /// The request's path (never its query), when the proxy sees it:
    /// plain HTTP and intercepted hosts.
    pub path: Option<String>,
    /// The sandbox asking.
    pub sandbox_id: Option<String>,
    /// The command running in the sandbox (the latest, if several are).
    pub command: Option<String>,
    /// How the connection reached the proxy.
    pub via: Via,
    /// The rule "allow for this sandbox" adds (`host:port`, or an HTTP
    /// rule `METHOD host:port /path` for a narrowed host).
    pub rule: String,
}

impl AskRequest {
    /// The request as JSON (what the bindings and `serve` hand over).
    #[must_use]
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

/// The callback's decision.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AskAnswer {
    /// Let this request (and the misses for the same destination waiting
    /// with it) through; ask again next time.
    AllowOnce,
    /// Add [`AskRequest::rule`] to the sandbox's policy: visible in the
    /// policy from now on, gone with the sandbox.
    AllowSandbox,
    /// Refuse, with a reason the agent reads in the 403 and the exec's
    /// result.
    Deny(String),
}

impl AskAnswer {
    /// A deny with `reason`.
    pub fn deny(reason: impl Into<String>) -> AskAnswer {
        AskAnswer::Deny(reason.into())
    }

    /// Reads an answer from a binding or a `serve` client: `"once"`,
    /// `"sandbox"`, `"deny"`, or `{"answer": ..., "reason": ...}`.
    ///
    /// # Errors
    /// A message saying what was expected.
    pub fn from_json(v: &Value) -> Result<AskAnswer, String> {
        let (answer, reason) = match v {
            Value::String(s) => (s.as_str(), None),
            Value::Object(m) => (
                m.get("answer").and_then(Value::as_str).unwrap_or_default(),
                m.get("reason").and_then(Value::as_str),
            ),
            _ => ("", None),
        };
        match answer {
            "once" => Ok(AskAnswer::AllowOnce),
            "sandbox" => Ok(AskAnswer::AllowSandbox),
            "deny" => Ok(AskAnswer::Deny(
                reason.unwrap_or("denied by the person or program asked").to_owned(),
            )),
            _ => Err(format!(
                "the ask callback answered {v}; expected \"once\", \"sandbox\", \"deny\" or {{\"answer\": \"deny\", \"reason\": \"...\"}}"
            )),
        }
    }
}

impl AskAnswer {
    /// [`from_json`](Self::from_json) on text, as a binding's callback
    /// returns it; anything unreadable is a deny that says what came.
    #[must_use]
    pub fn from_text(text: &str) -> AskAnswer {
        serde_json::from_str::<Value>(text)
            .map_err(|e| format!("the ask callback's answer is not JSON ({e})"))
            .and_then(|v| AskAnswer::from_json(&v))
            .unwrap_or_else(|e| AskAnswer::Deny(format!("the ask callback failed: {e}")))
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// An ask callback, boxed.
pub type AskFn = Arc<dyn Fn(AskRequest) -> BoxFuture<AskAnswer> + Send + Sync>;

/// Boxes `f` as an [`AskFn`].
pub fn ask_fn<F, Fut>(f: F) -> AskFn
where
    F: Fn(AskRequest) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = AskAnswer> + Send + 'static,
{
    Arc::new(move |r| Box::pin(f(r)))
}

/// How an ask ended, as the proxy applies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    Once,
    Sandbox,
    Deny(String),
    TimedOut(Duration),
    Failed(String),
}

impl Outcome {
    /// The `ask` field of the decision's audit event.
    pub(crate) fn tag(&self) -> &'static str {
        match self {
            Outcome::Once => "once",
            Outcome::Sandbox => "sandbox",
            Outcome::Deny(_) => "deny",
            Outcome::TimedOut(_) => "timeout",
            Outcome::Failed(_) => "error",
        }
    }

    /// The refusal's reason, for the outcomes that refuse.
    pub(crate) fn refusal(&self) -> Option<String> {
        match self {
            Outcome::Once | Outcome::Sandbox => None,
            Outcome::Deny(r) => Some(format!("ask-denied; reason={r}")),
            Outcome::TimedOut(t) => Some(format!(
                "ask-timeout; error=no answer within {}s",
                t.as_secs_f64()
            )),
            Outcome::Failed(e) => Some(format!("ask-denied; reason=the ask callback failed: {e}")),
        }
    }
}

/// The proxy's side of asking: one question per destination at a time,
/// each bounded by the timeout, a panicking callback contained.
pub(crate) struct Asker {
    f: AskFn,
    timeout: Duration,
    pending: Mutex<HashMap<String, watch::Receiver<Option<Outcome>>>>,
}

impl Asker {
    pub(crate) fn new(f: AskFn, timeout: Duration) -> Asker {
        Asker {
            f,
            timeout,
            pending: Mutex::new(HashMap::new()),
        }
    }

    /// Asks about `req` (or joins the question already open for `key`).
    /// The question runs on its own task: a client that hangs up does not
    /// cancel it for the others waiting.
    pub(crate) async fn ask(self: &Arc<Self>, key: String, req: AskRequest) -> Outcome {
        let mut rx = {
            let Ok(mut pending) = self.pending.lock() else {
                return Outcome::Failed("the ask state is poisoned".into());
            };
            if let Some(rx) = pending.get(&key) {
                rx.clone()
            } else {
                let (tx, rx) = watch::channel(None);
                pending.insert(key.clone(), rx.clone());
                let me = self.clone();
                tokio::spawn(async move {
                    let outcome = me.decide(req).await;
                    if let Ok(mut p) = me.pending.lock() {
                        p.remove(&key);
                    }
                    let _ = tx.send(Some(outcome));
                });
                rx
            }
        };
        loop {
            if let Some(o) = rx.borrow_and_update().clone() {
                return o;
            }
            if rx.changed().await.is_err() {
                return Outcome::Failed("the question was abandoned".into());
            }
        }
    }

    async fn decide(&self, req: AskRequest) -> Outcome {
        let fut = match std::panic::catch_unwind(AssertUnwindSafe(|| (self.f)(req))) {
            Ok(fut) => fut,
            Err(p) => return Outcome::Failed(panic_text(p.as_ref())),
        };
        let mut task = tokio::spawn(fut);
        match tokio::time::timeout(self.timeout, &mut task).await {
            Err(_) => {
                task.abort();
                Outcome::TimedOut(self.timeout)
            }
            Ok(Err(e)) if e.is_panic() => Outcome::Failed(panic_text(e.into_panic().as_ref())),
            Ok(Err(e)) => Outcome::Failed(e.to_string()),
            Ok(Ok(AskAnswer::AllowOnce)) => Outcome::Once,
            Ok(Ok(AskAnswer::AllowSandbox)) => Outcome::Sandbox,
            Ok(Ok(AskAnswer::Deny(r))) => Outcome::Deny(r),
        }
    }
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "it panicked".into())
}

/// `path` as a glob matching exactly itself, or `None` when it holds a
/// character globs treat specially (then "allow for this sandbox" allows
/// once instead).
pub(crate) fn literal_glob(path: &str) -> Option<&str> {
    (!path.contains(['*', '?', '[', ']', '{', '}', '\\', ' '])).then_some(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn answers_parse_from_every_form_and_nonsense_is_named() {
        assert_eq!(
            AskAnswer::from_json(&json!("once")),
            Ok(AskAnswer::AllowOnce)
        );
        assert_eq!(
            AskAnswer::from_json(&json!({"answer": "sandbox"})),
            Ok(AskAnswer::AllowSandbox)
        );
        assert_eq!(
            AskAnswer::from_json(&json!({"answer": "deny", "reason": "not today"})),
            Ok(AskAnswer::deny("not today"))
        );
        assert!(matches!(
            AskAnswer::from_json(&json!("deny")),
            Ok(AskAnswer::Deny(_))
        ));
        for bad in [json!("yes"), json!(1), json!(null), json!({"reason": "x"})] {
            let e = AskAnswer::from_json(&bad).unwrap_err();
            assert!(e.contains("expected \"once\""), "{e}");
        }
    }

    #[test]
    fn only_plain_paths_become_rules() {
        assert_eq!(literal_glob("/repos/acme/x"), Some("/repos/acme/x"));
        for p in ["/a/*", "/a?b", "/[x]", "/{a,b}", "/a\\b", "/a b"] {
            assert_eq!(literal_glob(p), None, "{p}");
        }
    }
}
