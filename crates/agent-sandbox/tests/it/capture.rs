//! Every tool gets through the gatekeeper (#12): init's DNS and transparent
//! capture, tested with real clients (curl, wget, git, pip, npm, Node's
//! `fetch`, Python's `urllib`, `nc`, `ssh`, `dig`) from the clients image
//! against servers on the host's loopback, reached through `resolve` pins
//! under `.test` names. A refused destination is a canary that must see
//! nothing.

use std::path::PathBuf;
use std::time::Duration;

use agent_sandbox::proxy::{AuditEvent, Verdict, Via};
use agent_sandbox::{Output, Sandbox, SandboxBuilder};

use crate::support::canary::EchoCanary;
use crate::support::clients::{clients_image, write_fixtures, Sshd, StaticHttps, TestCa};
use crate::support::docker::{engine_shared, image, tempdir};

/// What makes a program ignore the proxy: no proxy variables at all.
const NO_PROXY_VARS: &str =
    "unset HTTP_PROXY HTTPS_PROXY ALL_PROXY http_proxy https_proxy all_proxy NODE_USE_ENV_PROXY; ";

/// The local stand-ins: one HTTPS server (`pypi.test`, `npm.test`,
/// `git.test`, `web.test` all pinned to it), an echo server (`echo.test`),
/// and a canary (`denied.test`, on a port the policy names for another
/// host, so capture listens there too, but no rule allows denied.test).
struct World {
    https: StaticHttps,
    echo: EchoCanary,
    canary: EchoCanary,
    /// Mounted at /fixtures: ca.pem.
    fixtures: PathBuf,
}

const NAMES: [&str; 4] = ["pypi.test", "npm.test", "git.test", "web.test"];

async fn world() -> World {
    let ca = TestCa::new(&NAMES);
    let https = StaticHttps::start(&ca).await;
    write_fixtures(&https.root, &format!("https://npm.test:{}/npm", https.port));
    let fixtures = tempdir("fixtures");
    std::fs::write(fixtures.join("ca.pem"), &ca.pem).unwrap();
    World {
        https,
        echo: EchoCanary::start().await,
        canary: EchoCanary::start().await,
        fixtures,
    }
}

impl World {
    /// The clients image, with every stand-in pinned and allowed except
    /// `denied.test`.
    fn sandbox(&self) -> SandboxBuilder {
        let p = self.https.port;
        let (e, c) = (self.echo.addr.port(), self.canary.addr.port());
        let mut b = Sandbox::builder()
            .image(clients_image())
            .timeout(Duration::from_secs(240))
            .mount(&self.fixtures, "/fixtures")
            .allow(format!("echo.test:{e}"))
            .resolve("echo.test", e, "127.0.0.1")
            // Capture listens on this port because of this rule; denied.test
            // has no rule of its own.
            .allow(format!("other.test:{c}"))
            .resolve("denied.test", c, "127.0.0.1");
        for name in NAMES {
            b = b.allow(format!("{name}:{p}")).resolve(name, p, "127.0.0.1");
        }
        b
    }
}

fn show(out: &Output) -> String {
    format!(
        "exit {}\n--- stdout\n{}\n--- stderr\n{}\n--- events\n{:#?}",
        out.exit_code,
        out.stdout_str(),
        out.stderr_str(),
        out.events
    )
}

fn refused<'a>(out: &'a Output, host: &str) -> Vec<&'a AuditEvent> {
    out.refusals().filter(|e| e.host == host).collect()
}

/// curl, wget, `git clone https://`, `pip install` and `npm install`, all
/// through the proxy variables the sandbox sets, each trusting the test CA
/// through its own option; a denied host fails with the reason visible.
#[tokio::test]
async fn package_clients_work_through_the_proxy_variables() {
    let _engine = engine_shared().await;
    let w = world().await;
    let p = w.https.port;
    let c = w.canary.addr.port();
    let script = format!(
        r#"set -e
cd /tmp
curl -fsS --cacert /fixtures/ca.pem https://pypi.test:{p}/pypi/simple/ | grep -q sandbox-demo && echo curl-ok
wget -q --ca-certificate=/fixtures/ca.pem -O /tmp/w https://pypi.test:{p}/pypi/simple/sandbox-demo/ && grep -q whl /tmp/w && echo wget-ok
GIT_SSL_CAINFO=/fixtures/ca.pem git clone -q https://git.test:{p}/git/repo.git /tmp/repo && cat /tmp/repo/README
# /tmp is noexec; a run without a workspace has a scratch /workspace.
python3 -m venv /workspace/venv
/workspace/venv/bin/pip install -q --disable-pip-version-check --cert /fixtures/ca.pem --index-url https://pypi.test:{p}/pypi/simple/ sandbox-demo
/workspace/venv/bin/python -c 'import sandbox_demo; print(sandbox_demo.GREETING)'
mkdir /tmp/app && cd /tmp/app
npm install --no-audit --no-fund --loglevel=error --cafile /fixtures/ca.pem --registry https://npm.test:{p}/npm/ sandbox-demo
node -e 'console.log(require("sandbox-demo"))'
set +e
echo '--- denied'
wget --ca-certificate=/fixtures/ca.pem -O- https://denied.test:{c}/ 2>&1
/workspace/venv/bin/pip download --retries 0 --disable-pip-version-check --cert /fixtures/ca.pem --index-url https://denied.test:{c}/simple/ -d /tmp/dl sandbox-demo 2>&1
curl -sS --cacert /fixtures/ca.pem https://denied.test:{c}/ 2>&1
exit 0
"#
    );
    let out = w.sandbox().run(script).await.unwrap();
    let text = out.stdout_str();
    for want in [
        "curl-ok",
        "wget-ok",
        "cloned through agent-sandbox",
        "hello from the local index",
        "hello from the local registry",
    ] {
        assert!(text.contains(want), "{want}: {}", show(&out));
    }
    let denied = text.split("--- denied").nth(1).unwrap_or_default();
    assert!(
        denied.contains("Blocked by agent-sandbox policy: no-matching-rule"),
        "wget and pip print the reason phrase: {}",
        show(&out)
    );
    assert_eq!(
        w.canary.connections(),
        0,
        "nothing was dialled for denied.test"
    );
    let r = refused(&out, "denied.test");
    assert!(
        !r.is_empty()
            && r.iter()
                .all(|e| e.verdict == Verdict::Deny && e.via == Via::Proxy),
        "{}",
        show(&out)
    );
    assert!(w.https.connections() >= 5, "{}", w.https.connections());
}

/// Node's built-in `fetch`, Python's `urllib` with an empty `ProxyHandler`,
/// and `nc`, with no proxy variables at all: they resolve through init and
/// are captured; a denied host fails, and nothing is dialled.
#[tokio::test]
async fn clients_that_ignore_the_proxy_are_captured() {
    let _engine = engine_shared().await;
    let w = world().await;
    let (p, e, c) = (w.https.port, w.echo.addr.port(), w.canary.addr.port());
    let script = format!(
        r#"{NO_PROXY_VARS}
export NODE_EXTRA_CA_CERTS=/fixtures/ca.pem
node -e 'fetch("https://web.test:{p}/pypi/simple/").then(r => r.text()).then(t => console.log("node:" + t.includes("sandbox-demo")), e => console.log("node-error:" + e.cause))'
python3 -c '
import ssl, urllib.request
o = urllib.request.build_opener(urllib.request.ProxyHandler({{}}), urllib.request.HTTPSHandler(context=ssl.create_default_context(cafile="/fixtures/ca.pem")))
print("python:" + str(b"sandbox-demo" in o.open("https://web.test:{p}/pypi/simple/", timeout=20).read()))
'
# Data then a pause, not an immediate EOF: under gVisor, a socket whose
# peer closed right after its half-close polls as an error and nc drops
# the reply (the explicit proxy path too; see the README's gVisor notes).
(echo hello-through-capture; sleep 1) | nc -w 3 echo.test {e}
echo '--- denied'
node -e 'fetch("https://denied.test:{c}/").then(r => console.log("node-reached"), e => console.log("node-refused:" + e.cause))'
python3 -c '
import urllib.request
try:
    urllib.request.build_opener(urllib.request.ProxyHandler({{}})).open("http://denied.test:{c}/", timeout=20)
    print("python-reached")
except Exception as e:
    print("python-refused:", e)
'
echo "nc-got:[$( (echo x; sleep 1) | nc -w 3 denied.test {c})]"
"#
    );
    let out = w.sandbox().run(script).await.unwrap();
    let text = out.stdout_str();
    let (allowed, denied) = text.split_once("--- denied").unwrap_or((&text, ""));
    for want in ["node:true", "python:True", "hello-through-capture"] {
        assert!(allowed.contains(want), "{want}: {}", show(&out));
    }
    assert!(denied.contains("node-refused:"), "{}", show(&out));
    assert!(denied.contains("python-refused:"), "{}", show(&out));
    assert!(!denied.contains("reached"), "{}", show(&out));
    assert!(denied.contains("nc-got:[]"), "{}", show(&out));
    assert_eq!(
        w.canary.connections(),
        0,
        "nothing was dialled for denied.test"
    );
    assert_eq!(w.echo.connections(), 1, "nc's one connection");
    let r = refused(&out, "denied.test");
    assert!(
        !r.is_empty()
            && r.iter().all(|e| e.verdict == Verdict::Deny
                && e.via == Via::Capture
                && e.port == c
                && e.reason.as_deref() == Some("no-matching-rule")),
        "the refusals are in the result, marked captured: {}",
        show(&out)
    );
    let captured: Vec<_> = out
        .events
        .iter()
        .filter(|e| e.verdict == Verdict::Allow && e.via == Via::Capture)
        .map(|e| (e.host.as_str(), e.port))
        .collect();
    assert!(
        captured.contains(&("web.test", p)) && captured.contains(&("echo.test", e)),
        "{captured:?}"
    );
}

/// `git clone ssh://` through a `host:port` rule; the same host on a port
/// the policy does not allow for it goes nowhere.
#[tokio::test]
async fn git_over_ssh_works_through_a_host_port_rule() {
    let _engine = engine_shared().await;
    let w = world().await;
    let sshd = Sshd::start();
    let bare = write_fixtures(&tempdir("ssh-root"), "https://unused.test");
    std::fs::write(w.fixtures.join("key"), &sshd.key).unwrap();
    let c = w.canary.addr.port();
    let s = sshd.port;
    let script = format!(
        r#"{NO_PROXY_VARS}
cp /fixtures/key /tmp/key && chmod 600 /tmp/key
export GIT_SSH_COMMAND="ssh -i /tmp/key -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o ConnectTimeout=10"
git clone -q ssh://{user}@git.test:{s}{bare} /tmp/repo && cat /tmp/repo/README
echo "whoami:$(whoami) group:$(id -gn)"
echo '--- other port'
$GIT_SSH_COMMAND -p {c} {user}@git.test true; echo "ssh-exit:$?"
"#,
        user = sshd.user,
        bare = bare.display()
    );
    // Run as the workspace's owner, an id the image's /etc/passwd does not
    // name: ssh needs an entry ("No user exists for uid"), which the
    // sandbox's own /etc/passwd adds.
    let out = w
        .sandbox()
        .workspace(tempdir("ssh-ws"))
        .allow(format!("git.test:{s}"))
        .resolve("git.test", s, "127.0.0.1")
        .resolve("git.test", c, "127.0.0.1")
        .run(script)
        .await
        .unwrap();
    let text = out.stdout_str();
    let (cloned, other) = text.split_once("--- other port").unwrap_or((&text, ""));
    assert!(
        cloned.contains("cloned through agent-sandbox"),
        "{}",
        show(&out)
    );
    assert!(
        cloned.contains("whoami:sandbox group:sandbox"),
        "{}",
        show(&out)
    );
    assert!(other.contains("ssh-exit:255"), "{}", show(&out));
    assert_eq!(w.canary.connections(), 0, "git.test:{c} was never dialled");
    let r = refused(&out, "git.test");
    assert!(
        r.iter().any(|e| e.port == c && e.via == Via::Capture),
        "{}",
        show(&out)
    );
}

/// TXT, MX and AAAA get no data; a long random name gets a local address
/// and nothing else: no event, so nothing reached the proxy, and the
/// sandbox has no other way out.
#[tokio::test]
async fn dns_answers_locally_and_never_forwards() {
    let _engine = engine_shared().await;
    let long: String = (0..3)
        .map(|i| format!("{i}{}", "x7q2".repeat(15)))
        .collect::<Vec<_>>()
        .join(".")
        + ".exfil.test";
    let script = format!(
        r#"for t in TXT MX AAAA; do echo "$t $(dig +tries=1 +time=3 $t data.exfil.test | grep -o 'status: [A-Z]*, id: [0-9]*' | cut -d, -f1) answers=$(dig +short +tries=1 +time=3 $t data.exfil.test | wc -l)"; done
echo "long $(dig +short +tries=1 +time=3 A {long})"
getent hosts {long} >/dev/null && echo getent-ok
cat /etc/hosts
"#
    );
    let out = Sandbox::builder()
        .image(clients_image())
        .run(script)
        .await
        .unwrap();
    let text = out.stdout_str();
    for t in ["TXT", "MX", "AAAA"] {
        assert!(
            text.contains(&format!("{t} status: NOERROR answers=0")),
            "{t}: {}",
            show(&out)
        );
    }
    let addr = text
        .lines()
        .find_map(|l| l.strip_prefix("long "))
        .unwrap_or_default();
    assert!(addr.starts_with("127.100."), "{}", show(&out));
    assert!(text.contains("getent-ok"), "{}", show(&out));
    assert!(
        out.events.is_empty(),
        "lookups reach nothing: {}",
        show(&out)
    );
    let hosts: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with("TXT") && !l.starts_with("MX") && !l.starts_with("AAAA"))
        .filter(|l| !l.starts_with("long") && !l.starts_with("getent"))
        .collect();
    assert_eq!(
        hosts,
        [
            "127.0.0.1\tlocalhost",
            "::1\tlocalhost ip6-localhost ip6-loopback",
            "127.0.1.1\tsandbox"
        ],
        "/etc/hosts names only localhost and the sandbox"
    );
}

/// A program can still serve on its own ports and reach them, and a
/// synthetic address on a port the policy does not cover, or a raw IP
/// literal, goes nowhere.
#[tokio::test]
async fn own_ports_work_and_uncovered_ports_and_ip_literals_go_nowhere() {
    let _engine = engine_shared().await;
    let canary = EchoCanary::start().await;
    let k = canary.addr.port();
    let script = format!(
        r#"{NO_PROXY_VARS}
cd /tmp
python3 -m http.server 8080 --bind 0.0.0.0 >/dev/null 2>&1 &
python3 -m http.server 3000 --bind 127.0.0.1 >/dev/null 2>&1 &
python3 -m http.server 8000 >/dev/null 2>&1 &
sleep 1.5
for u in http://127.0.0.1:8080/ http://localhost:3000/ http://sandbox:8000/; do curl -fsS -o /dev/null "$u" && echo "served $u"; done
addr=$(getent hosts web.test | cut -d' ' -f1); echo "addr $addr"
for t in "$addr {k}" "127.0.0.1 {k}" "web.test {k}"; do echo x | nc -N -w 3 $t >/dev/null 2>&1; echo "nc $t exit:$?"; done
"#
    );
    let out = Sandbox::builder()
        .image(image())
        .allow("web.test")
        .resolve("web.test", k, "127.0.0.1")
        .run(script)
        .await
        .unwrap();
    let text = out.stdout_str();
    for u in [
        "http://127.0.0.1:8080/",
        "http://localhost:3000/",
        "http://sandbox:8000/",
    ] {
        assert!(text.contains(&format!("served {u}")), "{u}: {}", show(&out));
    }
    assert!(text.contains("addr 127.100."), "{}", show(&out));
    assert_eq!(
        text.matches(" exit:1").count(),
        3,
        "every attempt failed: {}",
        show(&out)
    );
    assert_eq!(canary.connections(), 0, "nothing was dialled");
}
