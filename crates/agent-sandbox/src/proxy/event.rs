//! Audit events: one per decision the proxy makes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde::{Serialize, Serializer};

/// Allowed, denied, or allowed but not reachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Verdict {
    /// The policy allowed the destination and the proxy reached it.
    Allow,
    /// The request was refused (policy, malformed request, or a limit).
    Deny,
    /// The policy allowed the destination, but resolving or connecting to
    /// it failed or timed out (`reason` says which): a network problem,
    /// not a policy decision.
    Error,
}

/// How a connection reached the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Via {
    /// A program used the proxy (`HTTP_PROXY`, `HTTPS_PROXY`).
    #[default]
    Proxy,
    /// Init captured a connection to a name it resolved (a program that
    /// ignores the proxy variables). What the sandbox says, informational:
    /// it changes no decision.
    Capture,
}

/// One decision of the proxy.
///
/// Denials are delivered at once; allowed connections are delivered when
/// they end, with their byte counts and duration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditEvent {
    /// When the request arrived (RFC 3339 in JSON).
    #[serde(serialize_with = "rfc3339")]
    pub time: SystemTime,
    /// The sandbox this proxy serves, if it was given one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sandbox_id: Option<String>,
    /// Allowed or denied.
    pub verdict: Verdict,
    /// `CONNECT`, `GET`, ...
    pub method: String,
    /// The canonical host (or the raw text, for a malformed request).
    pub host: String,
    /// The destination port (0 when it could not be parsed).
    pub port: u16,
    /// The rule that decided, as written.
    pub rule: Option<String>,
    /// How the connection came: through the proxy variables or captured.
    pub via: Via,
    /// The request's path (never its query), for requests the proxy saw:
    /// plain HTTP and intercepted hosts. `None` for tunnels.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// When the decision was asked of the ask callback, its answer:
    /// `once`, `sandbox`, `deny`, `timeout` or `error`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ask: Option<String>,
    /// Why it was refused or failed (`no-matching-rule`, `special-address; ...`).
    pub reason: Option<String>,
    /// The status the proxy answered with (200 for an established tunnel;
    /// for forwarded requests, the upstream's status).
    pub status: u16,
    /// Bytes from the sandbox to the destination.
    pub bytes_up: u64,
    /// Bytes from the destination to the sandbox.
    pub bytes_down: u64,
    /// From request to end of connection, in milliseconds.
    pub duration_ms: u64,
    /// How many identical refusals in a row this entry stands for (a
    /// sandbox's log folds them; 1 for every event as the proxy emits it).
    pub count: u64,
}

/// Longest `host` kept in an event (a malformed request's raw text can be
/// as long as a request head).
pub(crate) const MAX_HOST_BYTES: usize = 256;
/// Longest `method` and `reason` kept.
pub(crate) const MAX_METHOD_BYTES: usize = 32;
pub(crate) const MAX_REASON_BYTES: usize = 512;
/// Longest `path` kept.
pub(crate) const MAX_PATH_BYTES: usize = 512;

/// `s` cut to at most `max` bytes on a character boundary, with `...` when cut.
pub(crate) fn truncated(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max.saturating_sub(3);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

fn rfc3339<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_millis(*t))
}

impl AuditEvent {
    /// The time in RFC 3339 with milliseconds, UTC (as in the JSON form).
    #[must_use]
    pub fn time_rfc3339(&self) -> String {
        humantime::format_rfc3339_millis(self.time).to_string()
    }

    /// The event as one line of JSON.
    #[must_use]
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Where events go: a callback the library caller provides.
pub type EventSink = Arc<dyn Fn(&AuditEvent) + Send + Sync>;

/// Collects one connection's numbers and delivers its event when dropped,
/// so the event is sent however the connection ends.
pub(crate) struct EventGuard {
    event: std::sync::Mutex<AuditEvent>,
    started: Instant,
    pub(crate) up: AtomicU64,
    pub(crate) down: AtomicU64,
    sink: Option<EventSink>,
}

impl EventGuard {
    pub(crate) fn new(
        event: AuditEvent,
        started: Instant,
        sink: Option<EventSink>,
    ) -> Arc<EventGuard> {
        Arc::new(EventGuard {
            event: std::sync::Mutex::new(event),
            started,
            up: AtomicU64::new(0),
            down: AtomicU64::new(0),
            sink,
        })
    }

    pub(crate) fn set_status(&self, status: u16) {
        if let Ok(mut e) = self.event.lock() {
            e.status = status;
        }
    }

    pub(crate) fn set_reason(&self, reason: String) {
        if let Ok(mut e) = self.event.lock() {
            e.reason = Some(truncated(&reason, MAX_REASON_BYTES));
        }
    }

    pub(crate) fn set_path(&self, path: &str) {
        if let Ok(mut e) = self.event.lock() {
            e.path = Some(truncated(path, MAX_PATH_BYTES));
        }
    }

    pub(crate) fn set_rule(&self, rule: String) {
        if let Ok(mut e) = self.event.lock() {
            e.rule = Some(rule);
        }
    }

    pub(crate) fn set_ask(&self, ask: &str) {
        if let Ok(mut e) = self.event.lock() {
            e.ask = Some(ask.to_owned());
        }
    }

    pub(crate) fn add_up(&self, n: usize) {
        self.up.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub(crate) fn add_down(&self, n: usize) {
        self.down.fetch_add(n as u64, Ordering::Relaxed);
    }
}

impl Drop for EventGuard {
    fn drop(&mut self) {
        let Some(sink) = &self.sink else { return };
        let Ok(event) = self.event.get_mut() else {
            return;
        };
        event.bytes_up = *self.up.get_mut();
        event.bytes_down = *self.down.get_mut();
        event.duration_ms = millis(self.started.elapsed());
        sink(event);
    }
}

pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
