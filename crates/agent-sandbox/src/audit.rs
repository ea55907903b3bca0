//! A sandbox's audit log: every event the proxy reports, held with a bound.
//!
//! Processes inside a sandbox can make the proxy refuse as fast as they can
//! open connections, and every refusal is an event. So the log keeps at most
//! [`EVENT_CAP`] entries (the oldest go first, counted in `dropped`), and an
//! identical refusal that follows the previous one is folded into it (its
//! `count` goes up) instead of adding an entry: one pip retry loop is one
//! line, not six, and a flood of refusals is one entry with a count.

use std::collections::VecDeque;
use std::sync::Mutex;

use crate::proxy::{AuditEvent, Verdict};

/// Entries kept per sandbox.
pub(crate) const EVENT_CAP: usize = 4096;

#[derive(Default)]
struct State {
    /// `(sequence number, event)`, oldest first.
    entries: VecDeque<(u64, AuditEvent)>,
    next: u64,
    /// Entries below this sequence number belong to an earlier exec and are
    /// never folded into (so each exec sees its own refusals).
    floor: u64,
    dropped: u64,
}

/// The bounded, folding event log of one sandbox.
#[derive(Default)]
pub(crate) struct EventLog {
    state: Mutex<State>,
    cap: usize,
}

/// Events since a [`EventLog::mark`], and how many were dropped to the cap.
#[derive(Default)]
pub(crate) struct Slice {
    pub(crate) events: Vec<AuditEvent>,
    pub(crate) dropped: u64,
}

impl EventLog {
    pub(crate) fn new() -> EventLog {
        EventLog::with_cap(EVENT_CAP)
    }

    pub(crate) fn with_cap(cap: usize) -> EventLog {
        EventLog {
            state: Mutex::new(State::default()),
            cap: cap.max(1),
        }
    }

    pub(crate) fn push(&self, e: &AuditEvent) {
        let Ok(mut s) = self.state.lock() else { return };
        let floor = s.floor;
        if let Some((seq, last)) = s.entries.back_mut() {
            if *seq >= floor && same_refusal(last, e) {
                last.count = last.count.saturating_add(e.count.max(1));
                return;
            }
        }
        if s.entries.len() >= self.cap {
            s.entries.pop_front();
            s.dropped += 1;
        }
        let seq = s.next;
        s.next += 1;
        s.entries.push_back((seq, e.clone()));
    }

    /// A point to collect from: later events are what [`since`](Self::since) returns.
    pub(crate) fn mark(&self) -> (u64, u64) {
        let Ok(mut s) = self.state.lock() else {
            return (0, 0);
        };
        s.floor = s.next;
        (s.next, s.dropped)
    }

    /// Events from `mark` on (those still held), and how many events were
    /// dropped to the cap since then.
    pub(crate) fn since(&self, (seq, dropped): (u64, u64)) -> Slice {
        let Ok(s) = self.state.lock() else {
            return Slice {
                events: Vec::new(),
                dropped: 0,
            };
        };
        Slice {
            events: s
                .entries
                .iter()
                .filter(|(n, _)| *n >= seq)
                .map(|(_, e)| e.clone())
                .collect(),
            dropped: s.dropped - dropped.min(s.dropped),
        }
    }

    /// Every event held.
    pub(crate) fn all(&self) -> Slice {
        self.since((0, 0))
    }
}

/// Two refusals (or failures) the agent cannot tell apart (time and
/// duration aside).
fn same_refusal(a: &AuditEvent, b: &AuditEvent) -> bool {
    a.verdict != Verdict::Allow
        && a.verdict == b.verdict
        && a.via == b.via
        && a.method == b.method
        && a.host == b.host
        && a.port == b.port
        && a.rule == b.rule
        && a.reason == b.reason
        && a.status == b.status
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    fn ev(verdict: Verdict, host: &str) -> AuditEvent {
        AuditEvent {
            time: SystemTime::now(),
            sandbox_id: None,
            verdict,
            method: "GET".into(),
            host: host.into(),
            port: 80,
            rule: None,
            via: crate::proxy::Via::Proxy,
            reason: Some("no-matching-rule".into()),
            status: 403,
            path: None,
            ask: None,
            bytes_up: 0,
            bytes_down: 0,
            duration_ms: 0,
            count: 1,
        }
    }

    #[test]
    fn identical_refusals_fold_into_one_entry_with_a_count() {
        let log = EventLog::new();
        for _ in 0..1000 {
            log.push(&ev(Verdict::Deny, "a.test"));
        }
        log.push(&ev(Verdict::Deny, "b.test"));
        log.push(&ev(Verdict::Allow, "c.test"));
        log.push(&ev(Verdict::Allow, "c.test"));
        let all = log.all();
        let seen: Vec<(&str, u64)> = all
            .events
            .iter()
            .map(|e| (e.host.as_str(), e.count))
            .collect();
        // Allowed connections are never folded: each has its own bytes and duration.
        assert_eq!(
            seen,
            [
                ("a.test", 1000),
                ("b.test", 1),
                ("c.test", 1),
                ("c.test", 1)
            ]
        );
        assert_eq!(all.dropped, 0);
    }

    #[test]
    fn the_log_is_capped_and_counts_what_it_dropped() {
        let log = EventLog::with_cap(10);
        for i in 0..25 {
            log.push(&ev(Verdict::Deny, &format!("h{i}.test")));
        }
        let all = log.all();
        assert_eq!(all.events.len(), 10);
        assert_eq!(all.events[0].host, "h15.test");
        assert_eq!(all.dropped, 15);
    }

    #[test]
    fn a_mark_starts_a_new_slice_and_nothing_folds_across_it() {
        let log = EventLog::new();
        log.push(&ev(Verdict::Deny, "a.test"));
        let mark = log.mark();
        log.push(&ev(Verdict::Deny, "a.test"));
        log.push(&ev(Verdict::Deny, "a.test"));
        let slice = log.since(mark);
        assert_eq!(slice.events.len(), 1);
        assert_eq!(slice.events[0].count, 2);
        assert_eq!(log.all().events.len(), 2);
        assert_eq!(log.all().events[0].count, 1);
    }
}
