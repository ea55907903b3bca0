//! `agent-sandbox serve --stdio`: a session for another program, as JSON
//! lines. First line out: `{"ready":true,"sandbox_id":...,"published":{PORT:"127.0.0.1:HOSTPORT"}}`
//! (`--publish`). Then one reply
//! per request, carrying the request's `id`; requests run concurrently, so
//! replies may come out of order.
//!
//! Requests (`op`, then its fields):
//! - `exec`: `cmd` (string: through `sh -c`; array: as given) and the exec
//!   options `env` (object), `workdir`, `timeout` (seconds, or text such as
//!   `"500ms"`), `stdin` (text) or `stdin_base64`, `output_limit`; any other
//!   field is refused (`invalid_argument`) -> `exit_code`, `stdout`, `stderr`,
//!   `timed_out`, `stdout_truncated`, `stderr_truncated`, `oom_killed`,
//!   `duration_ms`, `events`
//! - `run`: the same fields and reply as `exec`, plus `sandbox_id`, but in a
//!   fresh sandbox of its own, ended when the command ends (nothing it
//!   started survives; `/tmp` starts empty). Served from a pool of
//!   `--pool N` sandboxes started ahead of time (default 1), created at
//!   the first `run`.
//! - `write_file`: `path`, `data` (text) or `data_base64`
//! - `read_file`: `path` -> `data` (UTF-8 text) or, for other bytes, `data_base64`
//! - `list`: `path` -> `entries` [{name, kind, size}] (at most 10,000) and `truncated`
//! - `remove`: `path`
//! - `events` -> `events` (all so far)
//! - `allow` / `deny` / `remove_rule`: `rule` (a policy change, new connections)
//! - `policy` -> `policy`: the rules in force, by kind (those an ask added included)
//! - `answer` (with `--ask`): `ask_id`, `answer` (`once`, `sandbox` or
//!   `deny`), optional `reason` (for a deny)
//! - `close`: closes the session, replies, and exits (so does EOF on stdin)
//!
//! With `--ask`, a request that matches no rule is not refused at once:
//! `{"event":"ask","ask_id":N,"host":..,"port":..,"method":..,"path":..,
//! "command":..,"rule":..}` goes out and the request waits for the
//! `answer` op (at most `--ask-timeout`, default 30 s; then
//! `{"event":"ask_expired","ask_id":N}` and a deny). Only this stream's
//! reader answers: nothing inside the sandbox can.
//!
//! Errors: `{"id":..,"ok":false,"error":{"code":..,"message":..}}` with the
//! library's stable codes (plus `bad_request`).

use std::io::Write;
use std::sync::{Arc, Mutex};

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use agent_sandbox::ask::AskAnswer;
use agent_sandbox::options::{Naming, RuleChange};
use agent_sandbox::{Command, Error, ExecOptions, Pool, SandboxBuilder, Session};
use base64::Engine as _;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::{oneshot, OnceCell};

type Out = Arc<Mutex<std::io::Stdout>>;

fn send(out: &Out, v: &Value) {
    if let Ok(mut o) = out.lock() {
        let _ = writeln!(o, "{v}");
        let _ = o.flush();
    }
}

struct BadRequest(String);

enum Failure {
    Bad(BadRequest),
    Sandbox(Error),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::Sandbox(e)
    }
}

fn field<'a>(req: &'a Value, name: &str) -> Result<&'a str, Failure> {
    req.get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| Failure::Bad(BadRequest(format!("missing string field {name:?}"))))
}

fn bytes(req: &Value, text: &str, b64: &str) -> Result<Option<Vec<u8>>, Failure> {
    if let Some(t) = req.get(text).and_then(Value::as_str) {
        return Ok(Some(t.as_bytes().to_vec()));
    }
    match req.get(b64).and_then(Value::as_str) {
        Some(b) => base64::engine::general_purpose::STANDARD
            .decode(b)
            .map(Some)
            .map_err(|e| Failure::Bad(BadRequest(format!("{b64}: {e}")))),
        None => Ok(None),
    }
}

/// The command and options of an `exec` or `run` request: every field but
/// `op`, `id` and `cmd` is an exec option (`stdin_base64` is `stdin` as
/// bytes), so an unknown or mistyped one is refused like in every binding.
fn command_request(req: &Value) -> Result<(Command, ExecOptions), Failure> {
    let cmd = match req.get("cmd") {
        Some(Value::String(s)) => Command::Shell(s.clone()),
        Some(Value::Array(a)) if a.iter().all(Value::is_string) => Command::Argv(
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
        ),
        _ => {
            return Err(Failure::Bad(BadRequest(
                "cmd must be a string or an array of strings".into(),
            )))
        }
    };
    let mut fields = req.as_object().cloned().unwrap_or_default();
    for key in ["op", "id", "cmd", "stdin_base64"] {
        fields.remove(key);
    }
    let mut opts = ExecOptions::from_json(&Value::Object(fields).to_string(), Naming::Snake)?;
    if req.get("stdin").is_none_or(Value::is_null) {
        if let Some(data) = bytes(req, "stdin", "stdin_base64")? {
            opts = opts.stdin(data);
        }
    }
    Ok((cmd, opts))
}

/// What the requests act on: the session, the pool `run` uses, and the
/// questions waiting for an `answer`.
struct Served {
    session: Session,
    builder: SandboxBuilder,
    pool_size: usize,
    pool: OnceCell<Pool>,
    questions: Arc<Questions>,
}

/// The open questions, by `ask_id`.
#[derive(Default)]
struct Questions {
    next: AtomicU64,
    open: Mutex<HashMap<u64, oneshot::Sender<AskAnswer>>>,
}

/// Removes a question when its ask ends unanswered (the proxy timed it
/// out), telling the client it expired.
struct Expire {
    id: u64,
    questions: Arc<Questions>,
    out: Out,
}

impl Drop for Expire {
    fn drop(&mut self) {
        let open = self
            .questions
            .open
            .lock()
            .ok()
            .and_then(|mut o| o.remove(&self.id));
        if open.is_some() {
            send(
                &self.out,
                &json!({"event": "ask_expired", "ask_id": self.id}),
            );
        }
    }
}

/// Sends each miss to the client as an `ask` event and waits for its
/// `answer`.
fn asking(b: SandboxBuilder, questions: Arc<Questions>, out: Out) -> SandboxBuilder {
    b.on_ask(move |req| {
        let (questions, out) = (questions.clone(), out.clone());
        async move {
            let id = questions.next.fetch_add(1, Ordering::Relaxed) + 1;
            let (tx, rx) = oneshot::channel();
            if let Ok(mut open) = questions.open.lock() {
                open.insert(id, tx);
            }
            let _expire = Expire {
                id,
                questions: questions.clone(),
                out: out.clone(),
            };
            let mut event = req.to_json();
            if let Some(o) = event.as_object_mut() {
                o.insert("event".into(), json!("ask"));
                o.insert("ask_id".into(), json!(id));
            }
            send(&out, &event);
            rx.await
                .unwrap_or_else(|_| AskAnswer::deny("the serve client went away"))
        }
    })
}

fn answer(questions: &Questions, req: &Value) -> Result<Value, Failure> {
    let id = req
        .get("ask_id")
        .and_then(Value::as_u64)
        .ok_or_else(|| Failure::Bad(BadRequest("missing number field \"ask_id\"".into())))?;
    let answer = AskAnswer::from_json(req).map_err(|e| Failure::Bad(BadRequest(e)))?;
    let tx = questions.open.lock().ok().and_then(|mut o| o.remove(&id));
    match tx {
        Some(tx) => {
            let _ = tx.send(answer);
            Ok(json!({}))
        }
        None => Err(Failure::Bad(BadRequest(format!(
            "no open question {id} (answered already, expired, or never asked)"
        )))),
    }
}

async fn handle(served: &Served, req: &Value) -> Result<Value, Failure> {
    let session = &served.session;
    let op = field(req, "op")?;
    match op {
        "exec" => {
            let (cmd, opts) = command_request(req)?;
            Ok(session.exec_with(cmd, opts).await?.to_json(true))
        }
        "run" => {
            let (cmd, opts) = command_request(req)?;
            let pool = served
                .pool
                .get_or_try_init(|| served.builder.pool(served.pool_size))
                .await?;
            Ok(pool.run_with(cmd, opts).await?.to_json(true))
        }
        "write_file" => {
            let data = bytes(req, "data", "data_base64")?.unwrap_or_default();
            session.write_file(field(req, "path")?, data).await?;
            Ok(json!({}))
        }
        "read_file" => {
            // One copy in the reply, never two: text as it is, anything
            // else as base64 (the file limit bounds both).
            let data = session.read_file(field(req, "path")?).await?;
            Ok(match String::from_utf8(data) {
                Ok(text) => json!({ "data": text }),
                Err(e) => json!({
                    "data_base64": base64::engine::general_purpose::STANDARD.encode(e.as_bytes())
                }),
            })
        }
        "list" => {
            let listing = session
                .listing(req.get("path").and_then(Value::as_str).unwrap_or("."))
                .await?;
            Ok(json!({
                "entries": listing.entries.iter().map(|e| json!({"name": e.name, "kind": e.kind, "size": e.size})).collect::<Vec<_>>(),
                "truncated": listing.truncated,
            }))
        }
        "remove" => {
            session.remove(field(req, "path")?).await?;
            Ok(json!({}))
        }
        "events" => Ok(json!({ "events": session.events() })),
        "policy" => Ok(json!({ "policy": session.policy()?.rules().to_json() })),
        "answer" => answer(&served.questions, req),
        "allow" | "deny" | "remove_rule" => {
            session.change_rules(RuleChange::new(op, field(req, "rule")?)?)?;
            Ok(json!({}))
        }
        other => Err(Failure::Bad(BadRequest(format!("unknown op {other:?}")))),
    }
}

fn reply(id: &Value, result: Result<Value, Failure>) -> Value {
    match result {
        Ok(mut v) => {
            if let Some(o) = v.as_object_mut() {
                o.insert("id".into(), id.clone());
                o.insert("ok".into(), Value::Bool(true));
            }
            v
        }
        Err(Failure::Bad(BadRequest(m))) => {
            json!({"id": id, "ok": false, "error": {"code": "bad_request", "message": m}})
        }
        Err(Failure::Sandbox(e)) => {
            json!({"id": id, "ok": false, "error": {"code": e.code(), "message": e.to_string()}})
        }
    }
}

pub(crate) async fn serve(
    b: SandboxBuilder,
    pool_size: usize,
    ask: bool,
    publish: &[(u16, Option<u16>)],
) -> Result<u8, Error> {
    let out: Out = Arc::new(Mutex::new(std::io::stdout()));
    let questions = Arc::new(Questions::default());
    let b = if ask {
        asking(b, questions.clone(), out.clone())
    } else {
        b
    };
    let session = b.clone().idle_timeout(None).start().await?;
    let mut published = serde_json::Map::new();
    for (port, host_port) in publish {
        match session.expose(*port, *host_port).await {
            Ok(addr) => {
                published.insert(port.to_string(), addr.to_string().into());
            }
            Err(e) => {
                let _ = session.close().await;
                return Err(e);
            }
        }
    }
    let served = Arc::new(Served {
        session,
        builder: b,
        pool_size,
        pool: OnceCell::new(),
        questions,
    });
    send(
        &out,
        &json!({"ready": true, "sandbox_id": served.session.id(), "published": published}),
    );
    let mut input = BufReader::new(tokio::io::stdin());
    let mut tasks = tokio::task::JoinSet::new();
    let mut raw = Vec::new();
    loop {
        raw.clear();
        let read = tokio::select! {
            r = input.read_until(b'\n', &mut raw) => r,
            sig = crate::wait_for_signal() => {
                // Killed by a signal: the sandboxes go too, before we exit.
                tasks.abort_all();
                let _ = close(&served).await;
                return Ok(128 + sig);
            }
        };
        if !matches!(read, Ok(n) if n > 0) {
            break;
        }
        let req = match parse_line(&raw) {
            Ok(Some(req)) => req,
            Ok(None) => continue,
            Err(why) => {
                send(
                    &out,
                    &reply(&Value::Null, Err(Failure::Bad(BadRequest(why)))),
                );
                continue;
            }
        };
        let id = req.get("id").cloned().unwrap_or(Value::Null);
        if req.get("op").and_then(Value::as_str) == Some("close") {
            while tasks.join_next().await.is_some() {}
            let closed = close(&served).await;
            send(
                &out,
                &reply(&id, closed.map(|()| json!({})).map_err(Failure::Sandbox)),
            );
            return Ok(0);
        }
        let (served, out) = (served.clone(), out.clone());
        tasks.spawn(async move {
            let result = handle(&served, &req).await;
            send(&out, &reply(&id, result));
        });
    }
    while tasks.join_next().await.is_some() {}
    close(&served).await?;
    Ok(0)
}

/// One request line: `None` for a blank line; a bad byte or bad JSON is a
/// bad request (answered), never the end of the session.
fn parse_line(raw: &[u8]) -> Result<Option<Value>, String> {
    let line = std::str::from_utf8(raw).map_err(|e| format!("not UTF-8: {e}"))?;
    if line.trim().is_empty() {
        return Ok(None);
    }
    serde_json::from_str(line)
        .map(Some)
        .map_err(|e| format!("not JSON: {e}"))
}

async fn close(served: &Served) -> Result<(), Error> {
    let pool = match served.pool.get() {
        Some(p) => p.close().await,
        None => Ok(()),
    };
    served.session.close().await.and(pool)
}
