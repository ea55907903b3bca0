"""Tests of the installed wheel (make test installs it into a fresh venv)."""

import asyncio
import http.server
import os
import signal
import socket
import subprocess
import sys
import sysconfig
import textwrap
import threading
import time

import pytest

import agent_sandbox
from agent_sandbox import (
    DockerUnavailableError,
    Event,
    ImageNotFoundError,
    InvalidArgumentError,
    PolicyError,
    RunResult,
    Sandbox,
    SandboxError,
    WorkspaceError,
)

IMAGE = os.environ.get("AGENT_SANDBOX_IMAGE", "agent-sandbox/base:bookworm")


def sandbox(**kw):
    kw.setdefault("image", IMAGE)
    return Sandbox(**kw)


# A root caller's sandbox runs as the workspace's owner and refuses a
# root-owned workspace: the tests' workspaces belong to an ordinary user.
TEST_UID = 1000


@pytest.fixture(autouse=True)
def _workspace_owner(request):
    if "tmp_path" in request.fixturenames and os.getuid() == 0:
        os.chown(request.getfixturevalue("tmp_path"), TEST_UID, TEST_UID)


@pytest.fixture
def canary():
    """A local HTTP server on 127.0.0.1 that counts requests."""
    hits = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            body = b"hello from canary"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv.server_address[1], hits
    srv.shutdown()


def containers_of(label):
    out = subprocess.run(["docker", "ps", "-aq", "--filter", f"label={label}"], capture_output=True, text=True, check=True)
    return out.stdout.split()


def test_the_installed_wheel_is_tested():
    site = sysconfig.get_paths()["purelib"]
    assert agent_sandbox.__file__.startswith(site), agent_sandbox.__file__
    assert agent_sandbox.__version__


def test_run_returns_exit_code_output_and_removes_the_container(tmp_path):
    r = sandbox(workspace=str(tmp_path)).run("echo out; echo err >&2; echo data > /workspace/f; exit 3")
    assert isinstance(r, RunResult)
    assert (r.exit_code, r.stdout, r.stderr) == (3, "out\n", "err\n")
    assert r.stdout_bytes == b"out\n"
    assert not r.success and not r.timed_out and not r.oom_killed
    assert r.duration > 0
    assert (tmp_path / "f").read_text() == "data\n"
    assert (tmp_path / "f").stat().st_uid == tmp_path.stat().st_uid
    assert containers_of(f"agent-sandbox.id={r.sandbox_id}") == []
    assert "exit_code=3" in repr(r)


def test_argv_runs_without_a_shell():
    r = sandbox().run(["printf", "%s|", "a b", "$HOME"])
    assert r.stdout == "a b|$HOME|"


def test_streaming_callbacks_receive_output_as_it_arrives():
    chunks = []
    r = sandbox().run("for i in 1 2 3; do echo line$i; sleep 0.1; done", on_stdout=chunks.append)
    assert "".join(chunks) == "line1\nline2\nline3\n" == r.stdout
    assert len(chunks) >= 2, "delivered in pieces, not once at the end"


def test_timeout_kills_and_says_so():
    r = sandbox(timeout=1.5).run("trap '' TERM; sleep 60")
    assert r.timed_out and not r.success


def test_policy_allows_and_denies_with_a_local_canary(canary):
    port, hits = canary
    events = []
    s = sandbox(allow=[f"allowed.test:{port}"], resolve=[f"allowed.test:{port}:127.0.0.1"])
    r = s.run(
        f"curl -sS http://allowed.test:{port}/ok; echo; curl -s -o /dev/null -w '%{{http_code}}' http://denied.test:{port}/no",
        on_event=events.append,
    )
    assert r.stdout == "hello from canary\n403", r.stderr
    assert hits == ["/ok"], "the canary saw only the allowed request"
    verdicts = sorted((e.verdict, e.host) for e in r.events)
    assert verdicts == [("allow", "allowed.test"), ("deny", "denied.test")]
    denied = next(e for e in r.events if not e.allowed)
    assert isinstance(denied, Event)
    assert (denied.port, denied.reason, denied.rule) == (port, "no-matching-rule", None)
    assert "deny GET denied.test" in repr(denied) and "no-matching-rule" in repr(denied)
    assert r.refusals == [denied] and denied.via == "proxy"
    assert len(events) == 2, "on_event saw both decisions"


def test_errors_are_a_hierarchy_with_stable_codes(tmp_path, monkeypatch):
    with pytest.raises(PolicyError) as e:
        sandbox(allow=["*.com"]).run("true")
    assert e.value.code == "policy" and "*.com" in str(e.value)
    assert isinstance(e.value, SandboxError)
    with pytest.raises(WorkspaceError) as e:
        sandbox(workspace=str(tmp_path / "missing")).run("true")
    assert "does not exist" in str(e.value)
    with pytest.raises(InvalidArgumentError):
        sandbox(memory="lots").run("true")
    with pytest.raises(InvalidArgumentError):
        sandbox(timeout=-1)
    # Unknown or mistyped options, and bad rules, fail at construction and
    # name the option.
    with pytest.raises(InvalidArgumentError, match="allow") as e:
        sandbox(allow="github.com")  # a str is not a list of rules
    assert e.value.code == "invalid_argument"
    with pytest.raises(InvalidArgumentError, match="timeot"):
        sandbox(timeot=5)
    with pytest.raises(InvalidArgumentError, match="workdr"):
        sandbox().run("true", workdr="x")
    with pytest.raises(PolicyError):
        sandbox(allow=["*"])
    with pytest.raises(ImageNotFoundError) as e:
        Sandbox(image="localhost:1/agent-sandbox/missing:1").run("true")
    assert e.value.code == "image_not_found"
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/agent-sandbox.sock")
    with pytest.raises(DockerUnavailableError) as e:
        sandbox().run("true")
    assert "Start the engine" in str(e.value) and e.value.code == "docker_unavailable"


def test_run_takes_the_per_command_options_of_exec(tmp_path):
    (tmp_path / "sub").mkdir()
    r = sandbox(workspace=tmp_path, env={"A": "sandbox"}).run(
        'echo "$A $B $(pwd)"; cat', env={"B": "run"}, workdir="sub", stdin="fed\n"
    )
    assert r.stdout == "sandbox run /workspace/sub\nfed\n", r.stderr
    assert sandbox().run("sleep 5", timeout=0.5).timed_out
    # Control: without the per-run timeout the same command finishes.
    assert not sandbox().run("sleep 0.1").timed_out


def test_async_needs_no_running_loop_until_awaited_and_names_are_pythons():
    s = sandbox(allow=["pypi.org"], memory="64m")
    r = asyncio.run(s.run_async("echo hi"))
    assert r.stdout == "hi\n"
    assert repr(s) == f"Sandbox(image={IMAGE!r}, allow=['pypi.org'], memory='64m')"
    with pytest.raises(SandboxError) as e:
        sandbox(allow=["*"])
    assert type(e.value).__module__ == "agent_sandbox.errors"
    assert type(r).__module__ == "agent_sandbox"


def test_memory_takes_bytes_or_text():
    assert sandbox(memory="64m").run(["python3", "-c", "b = b'x' * (256 << 20)"]).oom_killed
    assert sandbox(memory=256 << 20).run("true").success


def test_asyncio_runs_concurrently():
    async def main():
        s = sandbox()
        return await asyncio.gather(*(s.run_async(f"echo {i}") for i in range(3)))

    results = asyncio.run(main())
    assert [r.stdout for r in results] == ["0\n", "1\n", "2\n"]


def test_many_sandboxes_from_threads_at_once():
    results = {}

    def work(i):
        results[i] = sandbox().run(f"echo {i}").stdout

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {i: f"{i}\n" for i in range(4)}


def test_run_releases_the_gil():
    ticks = []
    t = threading.Thread(target=lambda: sandbox().run("sleep 1"))
    t.start()
    while t.is_alive():
        ticks.append(time.monotonic())
        time.sleep(0.01)
    assert len(ticks) > 20, "the main thread ran while the sandbox did"


def _sigint_default():
    """The child gets SIGINT's default disposition: a test suite started in the
    background (`make test &`) inherits SIGINT ignored, and Python then never
    installs its KeyboardInterrupt handler."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_removes_the_container_and_raises_keyboard_interrupt():
    script = textwrap.dedent(
        f"""
        from agent_sandbox import Sandbox
        try:
            Sandbox(image={IMAGE!r}).run("sleep 60")
        except KeyboardInterrupt:
            print("KeyboardInterrupt", flush=True)
            raise
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_sigint_default)
    label = f"agent-sandbox.owner"
    for _ in range(100):
        owned = [c for c in subprocess.run(["docker", "ps", "-a", "--filter", f"label={label}", "--format", '{{.Label "agent-sandbox.owner"}}'], capture_output=True, text=True).stdout.split() if f":{proc.pid}:" in c]
        if owned:
            break
        time.sleep(0.1)
    assert owned, "the sandbox started"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert "KeyboardInterrupt" in out, err
    assert proc.returncode != 0
    left = subprocess.run(["docker", "ps", "-a", "--filter", f"label={label}", "--format", '{{.Label "agent-sandbox.owner"}}'], capture_output=True, text=True).stdout
    assert f":{proc.pid}:" not in left, "no container left behind"


def _host_addresses():
    """Every IPv4 address of this host but loopback (the kernel's local routes)."""
    lines = open("/proc/net/fib_trie").read().splitlines()
    found = {a.split()[-1] for a, b in zip(lines, lines[1:]) if "/32 host LOCAL" in b}
    return sorted(a for a in found if not a.startswith("127."))


def test_no_network_but_the_proxy():
    listener = socket.socket()
    listener.bind(("0.0.0.0", 0))
    listener.listen(64)
    port = listener.getsockname()[1]
    hosts = _host_addresses()
    assert hosts, "this host has an address besides loopback"
    probe = "import socket\nfor h in %r:\n    try:\n        socket.create_connection((h, %d), timeout=3).close(); print(h, 0)\n    except OSError as e:\n        print(h, e.errno)\n" % (hosts, port)
    # Control: a container with a network reaches every address.
    control = subprocess.run(["docker", "run", "--rm", "--network", "bridge", IMAGE, "python3", "-c", probe], capture_output=True, text=True)
    assert control.returncode == 0, control.stderr
    assert control.stdout == "".join(f"{h} 0\n" for h in hosts), control.stdout
    listener.settimeout(2)
    for _ in hosts:
        listener.accept()[0].close()
    # The sandbox reaches none of them: no route at all (ENETUNREACH).
    r = sandbox().run(["python3", "-c", probe])
    assert r.stdout == "".join(f"{h} 101\n" for h in hosts), r.stdout + r.stderr
    listener.settimeout(0.5)
    with pytest.raises(socket.timeout):
        listener.accept()


def test_the_agent_loop_example_runs(tmp_path):
    example = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "python", "agent_loop.py")
    env = dict(os.environ, AGENT_SANDBOX_IMAGE=IMAGE)
    out = subprocess.run([sys.executable, example, str(tmp_path)], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "hello from the workspace" in out.stdout
    assert "refused: no-matching-rule" in out.stdout
    assert "Read-only file system" in out.stdout
    assert (tmp_path / "hello.py").exists()


def test_sessions_run_many_commands_and_files_round_trip(tmp_path, canary):
    port, hits = canary
    with sandbox(workspace=str(tmp_path), resolve=[f"late.test:{port}:127.0.0.1"]).session() as s:
        assert s.exec("echo one").stdout == "one\n"
        r = s.exec("echo $A; cat", env={"A": "env"}, stdin="in")
        assert r.stdout == "env\nin"
        s.write_file("notes/a.txt", "text")
        assert (tmp_path / "notes" / "a.txt").read_text() == "text"
        assert s.read_file("/workspace/notes/a.txt") == b"text"
        assert [e["name"] for e in s.list("notes")] == ["a.txt"]
        s.write_file("/tmp/b.bin", b"\x00\x01")
        assert s.read_file("/tmp/b.bin") == b"\x00\x01"
        with pytest.raises(agent_sandbox.FileError):
            s.read_file("/etc/passwd")
        curl = f"curl -s -o /dev/null -w '%{{http_code}}' http://late.test:{port}/"
        assert s.exec(curl).stdout == "403"
        s.allow(f"late.test:{port}")
        assert s.exec(curl).stdout == "200"
        assert hits == ["/"]
        assert [e.verdict for e in s.events] == ["deny", "allow"]
        sid = s.id
    assert containers_of(f"agent-sandbox.id={sid}") == []
    with pytest.raises(agent_sandbox.SessionClosedError):
        s.exec("true")


def test_sync_back_and_skip_gitignored_through_a_gateway(tmp_path, monkeypatch):
    # A gateway on the local engine: the workspace is a copy, as on a remote one.
    monkeypatch.setenv("AGENT_SANDBOX_GATEWAY", "always")
    (tmp_path / ".gitignore").write_text("build/\n")
    (tmp_path / "build").mkdir()
    (tmp_path / "build" / "big").write_text("local build")
    with sandbox(workspace=str(tmp_path), skip_gitignored=True).session() as s:
        assert s.exec("ls -A").stdout == ".gitignore\n"
        s.exec("echo made > made.txt; mkdir build; echo box > build/out")
        assert not (tmp_path / "made.txt").exists(), "a copy: seen here after a sync"
        assert s.sync_back() == {"written": 1, "removed": 0, "conflicts": []}
        assert (tmp_path / "made.txt").read_text() == "made\n"
        assert not (tmp_path / "build" / "out").exists(), "ignored: not copied back"
    assert (tmp_path / "build" / "big").read_text() == "local build"


def test_upload_and_download(tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "b.txt").write_text("b")
    (src / "link").symlink_to("/etc/passwd")
    out = tmp_path / "out"
    out.mkdir()
    (out / "b.txt").write_text("mine")
    with sandbox().session() as s:
        s.upload(src, "/tmp/in")
        assert s.exec("cat /tmp/in/sub/b.txt; echo; readlink /tmp/in/link").stdout == "b\n/etc/passwd\n"
        report = s.download("/tmp/in/sub", out)
        assert report["written"] == 1 and report["removed"] == 0
        assert report["conflicts"][0].startswith("b.txt"), report
        assert (out / "b.txt").read_text() == "mine", "a local file is never overwritten"
        assert (out / "b.txt.from-sandbox").read_text() == "b"
        with pytest.raises(SandboxError, match="not a tar file"):
            s.upload(out / "b.txt", "/tmp/x")
        s.exec("ln -s /etc /tmp/esc")
        with pytest.raises(SandboxError, match="symbolic link"):
            s.download("/tmp/esc", out)


def test_a_blocking_call_from_a_callback_fails_instead_of_hanging():
    errors = []

    def nested(_text):
        try:
            s.exec("true")
        except SandboxError as e:
            errors.append(e)

    with sandbox().session() as s:
        s.exec("echo hi", on_stdout=nested)
        assert s.exec("echo ok").stdout == "ok\n", "the session still works"
    assert len(errors) == 1 and "callback" in str(errors[0])


def test_async_sessions():
    async def main():
        async with sandbox().session() as s:
            results = await asyncio.gather(*(s.exec_async(f"echo {i}") for i in range(3)))
            return [r.stdout for r in results], s.id

    outs, sid = asyncio.run(main())
    assert outs == ["0\n", "1\n", "2\n"]
    assert containers_of(f"agent-sandbox.id={sid}") == []


def test_ctrl_c_during_a_session_exec_stops_the_command():
    script = textwrap.dedent(
        f"""
        import time
        from agent_sandbox import Sandbox
        with Sandbox(image={IMAGE!r}).session() as s:
            print("ready", s.id, flush=True)
            try:
                s.exec("echo started; exec sleep 60", on_stdout=lambda t: print("cmd", t.strip(), flush=True))
            except KeyboardInterrupt:
                for _ in range(50):
                    left = s.exec("pgrep -x sleep || echo none").stdout.strip()
                    if left == "none":
                        break
                    time.sleep(0.1)
                print("interrupted", left, flush=True)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_sigint_default)
    first = proc.stdout.readline()
    assert first.startswith("ready"), proc.stderr.read()
    sid = first.split()[1]
    # Control: the command runs before the cut (it said so, and the
    # container has a sleep in it).
    assert proc.stdout.readline().strip() == "cmd started", proc.stderr.read()
    cid = subprocess.run(["docker", "ps", "-q", "--filter", f"label=agent-sandbox.id={sid}"], capture_output=True, text=True, check=True).stdout.strip()
    assert subprocess.run(["docker", "exec", cid, "pgrep", "-x", "sleep"], capture_output=True).returncode == 0
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert "interrupted none" in out, (out, err)
    assert containers_of(f"agent-sandbox.id={sid}") == []


def test_pools_give_each_run_a_fresh_sandbox(tmp_path, canary):
    port, hits = canary
    box = sandbox(workspace=str(tmp_path), allow=[f"ok.test:{port}"], resolve=[f"ok.test:{port}:127.0.0.1"])
    with box.pool(2) as pool:
        assert pool.size == 2
        first = pool.run("echo scratch > /tmp/x; echo kept > /workspace/a; exit 4")
        assert first.exit_code == 4
        second = pool.run("test ! -e /tmp/x && cat /workspace/a")
        assert (second.exit_code, second.stdout) == (0, "kept\n")
        assert first.sandbox_id != second.sandbox_id
        chunks = []
        r = pool.run("echo $A; cat", env={"A": "env"}, stdin="in", on_stdout=chunks.append)
        assert r.stdout == "env\nin" and "".join(chunks) == r.stdout
        got = pool.run(f"curl -s http://ok.test:{port}/")
        assert got.stdout == "hello from canary" and [e.verdict for e in got.events] == ["allow"]
        assert hits == ["/"]
        assert pool.run("sleep 30", timeout=0.5).timed_out
    for sid in (first.sandbox_id, second.sandbox_id, got.sandbox_id):
        assert containers_of(f"agent-sandbox.id={sid}") == []
    with pytest.raises(agent_sandbox.PoolClosedError) as e:
        pool.run("true")
    assert e.value.code == "pool_closed"


def test_async_pools():
    async def main():
        async with sandbox().pool(2) as pool:
            results = await asyncio.gather(*(pool.run_async(f"echo {i}") for i in range(4)))
            return [r.stdout for r in results], {r.sandbox_id for r in results}

    outs, ids = asyncio.run(main())
    assert outs == ["0\n", "1\n", "2\n", "3\n"]
    assert len(ids) == 4
    for sid in ids:
        assert containers_of(f"agent-sandbox.id={sid}") == []


def test_a_pool_with_a_bad_rule_fails_to_start():
    with pytest.raises(PolicyError):
        sandbox(allow=["*"]).pool().start()


def test_sessions_and_pools_dropped_without_close_remove_their_containers():
    import gc

    s = sandbox().session().start()
    p = sandbox().pool(1).start()
    sid = s.id
    del s, p
    gc.collect()
    mine = f":{os.getpid()}:"
    for _ in range(100):
        owners = subprocess.run(
            ["docker", "ps", "-a", "--filter", "label=agent-sandbox", "--format", '{{.Label "agent-sandbox.owner"}}'],
            capture_output=True, text=True, check=True,
        ).stdout.split()
        if not any(mine in o for o in owners):
            break
        time.sleep(0.1)
    assert not any(mine in o for o in owners), owners
    assert containers_of(f"agent-sandbox.id={sid}") == []


def test_secrets_stay_outside_and_http_rules_narrow_a_host(canary):
    port, hits = canary
    value = "sk-python-secret-value-93e1"
    s = sandbox(allow_http=[f"GET api.test:{port} /ok/**"], resolve=[f"api.test:{port}:127.0.0.1"],
                secret=[("API_KEY", f"api.test:{port}", value)])
    assert value not in repr(s) and "API_KEY@api.test" in repr(s)
    r = s.run(
        f"echo \"inside: $API_KEY\"; "
        f"curl -s -o /dev/null -w 'ok %{{http_code}}\\n' http://api.test:{port}/ok/x; "
        f"curl -s -o /dev/null -w 'other-path %{{http_code}}\\n' http://api.test:{port}/admin; "
        f"curl -s -o /dev/null -w 'secret-in-clear %{{http_code}}\\n' -H \"X-Key: $API_KEY\" http://api.test:{port}/ok/y"
    )
    assert "inside: agent-sandbox-secret-api-key-" in r.stdout, r.stderr
    assert value not in r.stdout + r.stderr
    assert "ok 200\nother-path 403\nsecret-in-clear 403\n" in r.stdout
    assert hits == ["/ok/x"], "only the allowed request reached the server"
    reasons = {e.path: e.reason for e in r.refusals}
    assert reasons["/admin"].startswith("no-matching-http-rule"), reasons
    assert reasons["/ok/y"] == "secret-over-plain-http; secret=API_KEY"
    assert all(value not in e.to_json() for e in r.events)


def test_bad_secrets_are_clear_errors(monkeypatch):
    with pytest.raises(PolicyError, match="environment variable name"):
        sandbox(secret=[("1BAD", "api.test", "v")]).run("true")
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    with pytest.raises(InvalidArgumentError, match="NOT_SET_ANYWHERE is not set"):
        sandbox(secret=["TOKEN=NOT_SET_ANYWHERE@api.test"])
    with pytest.raises(PolicyError, match="METHOD HOST PATH"):
        sandbox(allow_http=["GET api.test"]).run("true")


def _curl(host, port, path="/"):
    return f"curl -s -o /dev/null -w '%{{http_code}} ' http://{host}:{port}{path}"


def test_on_ask_allows_once_for_the_sandbox_or_denies_with_a_reason(canary):
    port, hits = canary
    asked = []

    def on_ask(req):
        asked.append(req)
        return {"a.test": "once", "b.test": "sandbox"}.get(req.host, {"answer": "deny", "reason": "not for this task"})

    pins = [f"{h}.test:{port}:127.0.0.1" for h in "abc"]
    s = sandbox(resolve=pins, on_ask=on_ask)
    r = s.run(" ; ".join([_curl("a.test", port, "/a1"), _curl("a.test", port, "/a2"), _curl("b.test", port, "/b1"),
                          _curl("b.test", port, "/b2"), _curl("c.test", port, "/c")]))
    assert r.stdout.split() == ["200", "200", "200", "200", "403"], r.stderr
    assert [(q.host, q.port, q.method) for q in asked] == [("a.test", port, "GET"), ("a.test", port, "GET"),
                                                           ("b.test", port, "GET"), ("c.test", port, "GET")]
    assert asked[0].rule == f"a.test:{port}" and asked[0].path == "/a1" and "curl" in asked[0].command
    assert sorted(hits) == ["/a1", "/a2", "/b1", "/b2"], "c.test was never reached"
    denied = r.refusals[0]
    assert (denied.host, denied.ask, denied.reason) == ("c.test", "deny", "ask-denied; reason=not for this task")
    assert [e.ask for e in r.events if e.host == "b.test"] == ["sandbox", None]


def test_on_ask_async_raising_and_slow_callbacks(canary):
    port, hits = canary

    async def later(req):
        await asyncio.sleep(0.05)
        return "sandbox"

    def raises(req):
        raise ValueError("dialog closed")

    def slow(req):
        time.sleep(3)
        return "once"

    pin = [f"a.test:{port}:127.0.0.1"]

    async def main():
        box = sandbox(resolve=pin, on_ask=later)
        async with box.session() as s:
            r = await s.exec_async(_curl("a.test", port))
            assert r.stdout.split() == ["200"], r.stderr
            assert f"a.test:{port}" in s.policy["allow"], s.policy

    asyncio.run(main())
    r = sandbox(resolve=pin, on_ask=raises).run(_curl("a.test", port))
    assert r.stdout.split() == ["403"]
    assert r.refusals[0].reason == "ask-denied; reason=ValueError: dialog closed"
    r = sandbox(resolve=pin, on_ask=slow, ask_timeout=0.5).run(_curl("a.test", port))
    assert r.stdout.split() == ["403"] and r.refusals[0].ask == "timeout", r.refusals
    assert hits == ["/"], "only the allowed request reached the canary"


def test_policy_files_and_presets(tmp_path, canary):
    port, hits = canary
    policy = tmp_path / "policy.toml"
    policy.write_text(f'preset = ["pypi"]\nallow = ["file.test:{port}"]\nresolve = ["file.test:{port}:127.0.0.1"]\n')
    with sandbox(policy_file=policy, preset=["npm"]).session() as s:
        assert "pypi" in s.policy["preset"] and "npm" in s.policy["preset"]
        r = s.exec(_curl("file.test", port))
        assert r.stdout.split() == ["200"], r.stderr
    policy.write_text('allow = [\n  "ok.test",\n  "*.com",\n]\n')
    with pytest.raises(PolicyError, match=r"policy.toml:3: \"\*\.com\""):
        sandbox(policy_file=policy)
    with pytest.raises(PolicyError, match="the presets are"):
        sandbox(preset=["nope"])


def test_background_processes_stream_and_end_with_kill_or_the_session(tmp_path):
    (tmp_path / "hello.txt").write_text("served from the sandbox\n")
    with sandbox(workspace=tmp_path).session() as s:
        p = s.spawn("for i in 1 2 3; do echo line$i; sleep 0.1; done; echo oops >&2; exec sleep 1000")
        assert p.id == "p1" and p.running and p.exit_code is None
        seen = []
        for pipe, data in p:
            seen.append((pipe, data))
            if pipe == "stderr":
                break
        assert b"".join(d for k, d in seen if k == "stdout") == b"line1\nline2\nline3\n"
        assert seen[-1] == ("stderr", b"oops\n")
        got = p.read_output()
        assert got.stdout == "line1\nline2\nline3\n" and got.stderr == "oops\n" and got.exit_code is None
        assert p.read_output().stdout == ""
        p.kill()
        r = p.wait()
        assert r.exit_code == 137 and p.exit_code == 137 and not p.running
        # A dev server reached from the host through an exposed port.
        server = s.spawn("exec python3 -m http.server 8000 --bind 127.0.0.1")
        addr = s.expose(8000)
        host, port = addr.rsplit(":", 1)
        assert host == "127.0.0.1" and s.exposed == {8000: addr}
        body = b""
        for _ in range(100):
            try:
                with socket.create_connection((host, int(port)), timeout=5) as c:
                    c.sendall(b"GET /hello.txt HTTP/1.0\r\n\r\n")
                    body = b"".join(iter(lambda: c.recv(65536), b""))
            except OSError:
                body = b""
            if body.startswith(b"HTTP/1.0 200"):
                break
            time.sleep(0.1)
        assert body.endswith(b"served from the sandbox\n"), body
        assert [q.id for q in s.processes] == ["p1", "p2"]

        async def async_side():
            q = await s.spawn_async(["sh", "-c", "echo a; echo b >&2; exit 4"])
            chunks = [c async for c in q]
            return chunks, (await q.wait_async()).exit_code

        chunks, code = asyncio.run(async_side())
        assert sorted(chunks) == [("stderr", b"b\n"), ("stdout", b"a\n")] and code == 4
    with pytest.raises(agent_sandbox.SessionClosedError):
        server.wait()
    with pytest.raises(OSError):
        socket.create_connection((host, int(port)), timeout=2)
