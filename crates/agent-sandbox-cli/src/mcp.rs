//! `agent-sandbox mcp`: one session served to an MCP client over stdio
//! (the official Rust SDK, `rmcp`). The run flags are the session's policy
//! and limits. Tools run commands, handle files and background processes,
//! and ask for access; none of them changes the policy: only a person
//! answering an ask (MCP elicitation, with `--ask`) can widen it.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use agent_sandbox::ask::{AskAnswer, AskRequest};
use agent_sandbox::options::RuleChange;
use agent_sandbox::{Error, ExecOptions, SandboxBuilder, Session};
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{
    CallToolResult, Implementation, ListResourcesResult, PaginatedRequestParams,
    ReadResourceRequestParams, ReadResourceResponse, ReadResourceResult, Resource,
    ResourceContents, ServerCapabilities, ServerConfig,
};
use rmcp::service::{ElicitationError, RequestContext};
use rmcp::{
    schemars, tool, tool_handler, tool_router, ErrorData as McpError, Peer, RoleServer,
    ServerHandler, ServiceExt,
};
use serde::Deserialize;
use serde_json::{json, Value};

/// Bytes of stdout and of stderr a tool result carries unless
/// `--output-limit` says otherwise: a model's context is not a log file.
const DEFAULT_OUTPUT_LIMIT: usize = 64 << 10;
/// Entries `list_files` returns unless asked for fewer.
const DEFAULT_LIST: usize = 500;
const AUDIT_URI: &str = "agent-sandbox://audit";
const POLICY_URI: &str = "agent-sandbox://policy";

/// The MCP client, once it has connected: asks go to it.
type PeerCell = Arc<OnceLock<Peer<RoleServer>>>;

pub(crate) struct McpServer {
    session: Session,
    output_limit: usize,
    /// Whether a person is asked (`--ask`) about misses and access requests.
    ask: bool,
    ask_timeout: Duration,
    peer: PeerCell,
    published: Vec<(u16, std::net::SocketAddr)>,
}

/// A person's answer to an access question (an MCP elicitation form:
/// flat fields of primitive types only, so the choice is a string enum).
#[derive(Debug, Deserialize, schemars::JsonSchema)]
struct AccessAnswer {
    /// "once" lets this one connection through; "sandbox" allows the
    /// destination for the rest of this session; "deny" refuses it.
    #[schemars(extend("enum" = ["once", "sandbox", "deny"]))]
    decision: String,
    /// Why, when denying (the agent sees it).
    #[serde(default)]
    reason: String,
}

/// What a person decided.
enum Decision {
    Once,
    Sandbox,
    Deny(String),
}

impl AccessAnswer {
    fn decision(self) -> Decision {
        match self.decision.as_str() {
            "once" => Decision::Once,
            "sandbox" => Decision::Sandbox,
            "deny" if !self.reason.trim().is_empty() => Decision::Deny(self.reason),
            "deny" => Decision::Deny("denied by the person".into()),
            other => Decision::Deny(format!("the answer {other:?} is not once, sandbox or deny")),
        }
    }
}

rmcp::elicit_safe!(AccessAnswer);

/// Asks the person behind the MCP client; `None` when there is no way to
/// (no client yet, or it cannot show a form).
async fn ask_person(
    peer: &PeerCell,
    message: String,
    timeout: Duration,
) -> Option<Result<Decision, String>> {
    let peer = peer.get()?;
    let can = peer
        .peer_info()
        .is_some_and(|i| i.capabilities.elicitation.is_some());
    if !can {
        return None;
    }
    Some(
        match peer
            .elicit_with_timeout::<AccessAnswer>(message, Some(timeout))
            .await
        {
            Ok(Some(a)) => Ok(a.decision()),
            Ok(None) => Err("the person gave no answer".into()),
            Err(ElicitationError::UserDeclined | ElicitationError::UserCancelled) => {
                Err("the person declined".into())
            }
            Err(e) => Err(format!("the question failed: {e}")),
        },
    )
}

/// Adds the MCP ask to `b`: a request no rule covers waits for the person's
/// answer through the client (MCP elicitation).
pub(crate) fn asking(b: SandboxBuilder, peer: PeerCell, timeout: Duration) -> SandboxBuilder {
    b.on_ask(move |req: AskRequest| {
        let peer = peer.clone();
        async move {
            // Everything the sandbox chose is quoted (`{:?}`): a path or a
            // command cannot write the question's own words.
            let what = match &req.path {
                Some(p) => format!("{:?} {}:{} path {p:?}", req.method, req.host, req.port),
                None => format!("{}:{}", req.host, req.port),
            };
            let command = req.command.as_deref().unwrap_or("a command");
            let message = format!(
                "The sandboxed agent's command {command:?} wants to reach {what}, which the sandbox's policy does not allow. Allowing it for this session adds the rule {:?}. Allow it once, for this session (\"sandbox\"), or deny?",
                req.rule
            );
            match ask_person(&peer, message, timeout).await {
                Some(Ok(Decision::Once)) => AskAnswer::AllowOnce,
                Some(Ok(Decision::Sandbox)) => AskAnswer::AllowSandbox,
                Some(Ok(Decision::Deny(why)) | Err(why)) => AskAnswer::deny(why),
                None => AskAnswer::deny("the MCP client cannot ask its user (no elicitation support)"),
            }
        }
    })
}

fn tool_error(e: &Error) -> CallToolResult {
    CallToolResult::structured_error(json!({"code": e.code(), "message": e.to_string()}))
}

/// A tool's result: `ok`'s JSON, or the error with its stable code.
fn reply<T>(result: Result<T, Error>, ok: impl FnOnce(T) -> Value) -> CallToolResult {
    match result {
        Ok(v) => CallToolResult::structured(ok(v)),
        Err(e) => tool_error(&e),
    }
}

/// `request_access` names one host: not a wildcard, a range, a port or a
/// rule of another kind (the person is asked about exactly one name).
fn exact_host(host: &str) -> Result<(), String> {
    let odd = host
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')));
    match odd {
        _ if host.is_empty() => Err("host is empty".into()),
        Some(c) => Err(format!(
            "host must be one exact host name (like pypi.org), not {host:?}: {c:?} is not allowed (no wildcards, ranges, ports or paths; the port goes in port)"
        )),
        None => Ok(()),
    }
}

fn bad(message: impl Into<String>) -> CallToolResult {
    CallToolResult::structured_error(json!({"code": "invalid_argument", "message": message.into()}))
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
struct RunCommand {
    /// The shell command line (run with /bin/sh -c inside the sandbox).
    command: String,
    /// Working directory, relative to /workspace (default: /workspace).
    #[serde(default)]
    workdir: Option<String>,
    /// Extra environment variables.
    #[serde(default)]
    env: Option<HashMap<String, String>>,
    /// Kill the command after this many seconds.
    #[serde(default)]
    timeout_seconds: Option<f64>,
    /// Text fed to the command's standard input.
    #[serde(default)]
    stdin: Option<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
struct PathArg {
    /// A path under /workspace (absolute, or relative to it) or /tmp.
    path: String,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
struct WriteFile {
    /// A path under /workspace (absolute, or relative to it) or /tmp; parent directories are created.
    path: String,
    /// The whole new content of the file (UTF-8 text).
    content: String,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
struct ListFiles {
    /// A directory under /workspace or /tmp (default: /workspace).
    #[serde(default)]
    path: Option<String>,
    /// At most this many entries (default 500).
    #[serde(default)]
    max_entries: Option<usize>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
struct StartProcess {
    /// The shell command line of a long-running process (a dev server, a watcher).
    command: String,
    /// Working directory, relative to /workspace.
    #[serde(default)]
    workdir: Option<String>,
    /// Extra environment variables.
    #[serde(default)]
    env: Option<HashMap<String, String>>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
struct ProcessId {
    /// The id start_process returned (p1, p2, ...).
    process_id: String,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
struct RequestAccess {
    /// The host name the agent needs (for example pypi.org).
    host: String,
    /// The port (default 443).
    #[serde(default)]
    port: Option<u16>,
    /// Why the task needs it, in one sentence, for the person who decides.
    reason: String,
}

fn exec_options(
    workdir: Option<String>,
    env: Option<HashMap<String, String>>,
    limit: usize,
) -> ExecOptions {
    let mut o = ExecOptions::new().output_limit(limit);
    if let Some(w) = workdir {
        o = o.workdir(w);
    }
    for (k, v) in env.unwrap_or_default() {
        o = o.env(k, v);
    }
    o
}

impl McpServer {
    /// The session's background process `id`, or the tool result that says
    /// there is none.
    fn process(&self, id: &str) -> Result<agent_sandbox::Process, CallToolResult> {
        self.session
            .process(id)
            .ok_or_else(|| bad(format!("no process {id:?} (start_process returns the id)")))
    }
}

#[tool_router]
impl McpServer {
    /// Runs a shell command in the sandbox and returns its exit code, output and any network refusals.
    #[tool(
        description = "Run a shell command in the sandbox (/bin/sh -c, in /workspace unless workdir is given) and wait for it. Returns exit_code, stdout, stderr (each cut at the output limit: see stdout_truncated/stderr_truncated), timed_out, and refusals: network requests the sandbox's policy refused during the command, each with host, port and reason. A refusal means the destination is not allowed, not that the network is down: use request_access to ask a person for it. A non-zero exit code is a result, not a tool error. For servers and other long-running commands use start_process."
    )]
    async fn run_command(
        &self,
        Parameters(a): Parameters<RunCommand>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, McpError> {
        let _ = self.peer.set(ctx.peer.clone());
        let mut o = exec_options(a.workdir, a.env, self.output_limit);
        if let Some(t) = a.timeout_seconds {
            match Duration::try_from_secs_f64(t) {
                Ok(d) if !d.is_zero() => o = o.timeout(d),
                _ => {
                    return Ok(bad(format!(
                        "timeout_seconds must be a positive number, not {t}"
                    )))
                }
            }
        }
        if let Some(input) = a.stdin {
            o = o.stdin(input.into_bytes());
        }
        Ok(reply(self.session.exec_with(a.command, o).await, |out| {
            let mut v = out.to_json(true);
            if let Some(m) = v.as_object_mut() {
                m.remove("events");
                m.remove("setid_stripped");
                m.remove("sandbox_id");
            }
            v
        }))
    }

    #[tool(
        description = "Read a text file from the sandbox (under /workspace or /tmp). Returns its content; a file that is not UTF-8 comes back base64-encoded with encoding \"base64\"."
    )]
    async fn read_file(
        &self,
        Parameters(a): Parameters<PathArg>,
    ) -> Result<CallToolResult, McpError> {
        let path = a.path.clone();
        Ok(reply(
            self.session.read_file(&a.path).await,
            |data| match String::from_utf8(data) {
                Ok(text) => json!({"path": path, "content": text, "encoding": "utf-8"}),
                Err(e) => {
                    use base64::Engine as _;
                    let b64 = base64::engine::general_purpose::STANDARD.encode(e.into_bytes());
                    json!({"path": path, "content": b64, "encoding": "base64"})
                }
            },
        ))
    }

    #[tool(
        description = "Write a text file in the sandbox (under /workspace or /tmp), replacing it if it exists and creating parent directories."
    )]
    async fn write_file(
        &self,
        Parameters(a): Parameters<WriteFile>,
    ) -> Result<CallToolResult, McpError> {
        let n = a.content.len();
        let done = self
            .session
            .write_file(&a.path, a.content.into_bytes())
            .await;
        Ok(reply(done, |()| json!({"path": a.path, "bytes": n})))
    }

    #[tool(
        description = "List a directory in the sandbox (default /workspace): name, kind (file, dir, symlink, other) and size of each entry, sorted by name, at most max_entries (default 500); truncated says whether there were more."
    )]
    async fn list_files(
        &self,
        Parameters(a): Parameters<ListFiles>,
    ) -> Result<CallToolResult, McpError> {
        let path = a.path.unwrap_or_else(|| "/workspace".into());
        let max = a.max_entries.unwrap_or(DEFAULT_LIST).max(1);
        Ok(reply(self.session.listing(&path).await, |l| {
            let truncated = l.truncated || l.entries.len() > max;
            let entries: Vec<Value> = l
                .entries
                .iter()
                .take(max)
                .map(|e| json!({"name": e.name, "kind": e.kind, "size": e.size}))
                .collect();
            json!({"path": path, "entries": entries, "truncated": truncated})
        }))
    }

    #[tool(
        description = "Remove a file, a symbolic link (not its target) or an empty directory in the sandbox (under /workspace or /tmp)."
    )]
    async fn remove_file(
        &self,
        Parameters(a): Parameters<PathArg>,
    ) -> Result<CallToolResult, McpError> {
        Ok(reply(
            self.session.remove(&a.path).await,
            |()| json!({"path": a.path, "removed": true}),
        ))
    }

    #[tool(
        description = "Start a long-running command in the background (a dev server, a watcher, a long build) and return its process_id at once. Read its output with process_output and end it with stop_process; every process ends with the session."
    )]
    async fn start_process(
        &self,
        Parameters(a): Parameters<StartProcess>,
    ) -> Result<CallToolResult, McpError> {
        let o = exec_options(a.workdir, a.env, self.output_limit);
        Ok(reply(
            self.session.spawn(a.command, o).await,
            |p| json!({"process_id": p.id(), "running": true}),
        ))
    }

    #[tool(
        description = "The output a background process wrote since the last process_output call (stdout, stderr; dropped counts bytes lost when it wrote more than the output limit in between), whether it still runs, and its exit code once it ended."
    )]
    async fn process_output(
        &self,
        Parameters(a): Parameters<ProcessId>,
    ) -> Result<CallToolResult, McpError> {
        let p = match self.process(&a.process_id) {
            Ok(p) => p,
            Err(unknown) => return Ok(unknown),
        };
        let n = p.take_output();
        Ok(CallToolResult::structured(json!({
            "process_id": p.id(),
            "stdout": String::from_utf8_lossy(&n.stdout),
            "stderr": String::from_utf8_lossy(&n.stderr),
            "dropped": n.dropped,
            "running": p.is_running(),
            "exit_code": n.exit_code,
        })))
    }

    #[tool(
        description = "Stop a background process (and every process it started) and return its exit code."
    )]
    async fn stop_process(
        &self,
        Parameters(a): Parameters<ProcessId>,
    ) -> Result<CallToolResult, McpError> {
        let p = match self.process(&a.process_id) {
            Ok(p) => p,
            Err(unknown) => return Ok(unknown),
        };
        p.kill();
        Ok(
            match tokio::time::timeout(Duration::from_secs(10), p.wait()).await {
                Ok(done) => reply(
                    done,
                    |out| json!({"process_id": p.id(), "running": false, "exit_code": out.exit_code}),
                ),
                Err(_) => bad("the process did not end within 10 s of being killed"),
            },
        )
    }

    #[tool(
        description = "Ask for network access to a host the sandbox's policy does not allow. A person decides (you cannot change the policy yourself); say in reason why the task needs it. Returns granted true (retry your command) or a refusal that says why and how a person can allow it."
    )]
    async fn request_access(
        &self,
        Parameters(a): Parameters<RequestAccess>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, McpError> {
        let _ = self.peer.set(ctx.peer.clone());
        if let Err(why) = exact_host(&a.host) {
            return Ok(bad(why));
        }
        let port = a.port.unwrap_or(443);
        let rule = format!("{}:{port}", a.host);
        // The rule must parse before a person is asked about it.
        if let Err(e) = agent_sandbox::policy::PolicyBuilder::default()
            .allow(&rule)
            .build()
        {
            return Ok(bad(e.to_string()));
        }
        let refused = |why: &str| {
            CallToolResult::structured_error(json!({
                "code": "denied",
                "granted": false,
                "message": format!("{rule} was not allowed: {why}. A person can allow it by adding --allow {rule} to the agent-sandbox mcp command in the MCP client's configuration (or `allow = [\"{rule}\"]` in the --policy file) and restarting the server; the agent cannot."),
            }))
        };
        if !self.ask {
            return Ok(refused(
                "this server does not ask anyone (it was started without --ask)",
            ));
        }
        let message = format!(
            "The sandboxed agent asks for network access to {rule:?}. Its reason: {:?}. Allow it for this session (\"sandbox\"), or deny? (\"once\" counts as \"sandbox\" here: there is no connection waiting.)",
            a.reason
        );
        Ok(
            match ask_person(&self.peer, message, self.ask_timeout).await {
                Some(Ok(Decision::Once | Decision::Sandbox)) => reply(
                    RuleChange::new("allow", rule.clone())
                        .and_then(|c| self.session.change_rules(c)),
                    |()| json!({"granted": true, "rule": rule}),
                ),
                Some(Ok(Decision::Deny(why))) => refused(&format!("the person denied it ({why})")),
                Some(Err(why)) => refused(&why),
                None => refused("the MCP client cannot ask its user (no elicitation support)"),
            },
        )
    }
}

#[tool_handler]
impl ServerHandler for McpServer {
    fn get_info(&self) -> ServerConfig {
        let mut text = String::from(
            "A sandbox for running commands: a Docker container with a read-only root, a writable /workspace (the project) and /tmp, no network but an allowlist proxy. Run commands with run_command, long-running ones with start_process. Refused network requests are listed in each result; ask a person for access with request_access.",
        );
        for (port, addr) in &self.published {
            text.push_str(&format!(
                " Port {port} inside the sandbox is published on the host at http://{addr}."
            ));
        }
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_resources()
                .build(),
        )
        .with_server_info(Implementation::new(
            "agent-sandbox",
            env!("CARGO_PKG_VERSION"),
        ))
        .with_instructions(text)
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, McpError> {
        Ok(ListResourcesResult::with_all_items(vec![
            Resource::new(AUDIT_URI, "audit-log")
                .with_description(
                    "Every network decision of this session so far, one JSON object per line",
                )
                .with_mime_type("application/x-ndjson"),
            Resource::new(POLICY_URI, "policy")
                .with_description("The network rules in force, by kind")
                .with_mime_type("application/json"),
        ]))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, McpError> {
        let text = match request.uri.as_str() {
            AUDIT_URI => self
                .session
                .events()
                .iter()
                .map(|e| e.to_json())
                .collect::<Vec<_>>()
                .join("\n"),
            POLICY_URI => match self.session.policy() {
                Ok(p) => p.rules().to_json().to_string(),
                Err(e) => return Err(McpError::internal_error(e.to_string(), None)),
            },
            _ => {
                return Err(McpError::resource_not_found(
                    "no such resource",
                    Some(json!({"uri": request.uri})),
                ))
            }
        };
        Ok(ReadResourceResult::new(vec![ResourceContents::text(text, request.uri)]).into())
    }
}

/// Starts the session, publishes ports, and serves MCP on stdin/stdout
/// until the client closes stdin; then closes the session.
pub(crate) async fn serve(
    b: SandboxBuilder,
    ask: Option<Duration>,
    publish: &[(u16, Option<u16>)],
    output_limit: Option<usize>,
) -> Result<u8, Error> {
    let peer: PeerCell = Arc::default();
    let b = match ask {
        Some(t) => asking(b, peer.clone(), t),
        None => b,
    };
    let session = b.start().await?;
    let mut published = Vec::new();
    for (port, host_port) in publish {
        match session.expose(*port, *host_port).await {
            Ok(addr) => {
                eprintln!("agent-sandbox: port {port} in the sandbox is at http://{addr}");
                published.push((*port, addr));
            }
            Err(e) => {
                let _ = session.close().await;
                return Err(e);
            }
        }
    }
    let server = McpServer {
        session: session.clone(),
        output_limit: output_limit.unwrap_or(DEFAULT_OUTPUT_LIMIT),
        ask: ask.is_some(),
        ask_timeout: ask.unwrap_or(Duration::from_secs(30)),
        peer,
        published,
    };
    let served = server.serve(rmcp::transport::stdio()).await;
    let code = match served {
        Ok(running) => {
            let _ = running.waiting().await;
            0
        }
        Err(e) => {
            eprintln!("agent-sandbox mcp: {e}");
            1
        }
    };
    session.close().await?;
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::exact_host;

    #[test]
    fn request_access_takes_one_exact_host() {
        for ok in [
            "pypi.org",
            "files.pythonhosted.org",
            "127.0.0.1",
            "a-b_c.test",
        ] {
            assert!(exact_host(ok).is_ok(), "{ok}");
        }
        for wide in [
            "",
            "*",
            "*.test",
            "10.0.0.0/8",
            "x.test:*",
            "GET x.test /",
            "::1",
            "x.test\n",
        ] {
            assert!(exact_host(wide).is_err(), "{wide:?}");
        }
    }
}
