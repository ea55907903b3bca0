"""`agent-sandbox mcp` driven by the official MCP Python SDK (`mcp` on
PyPI) as a stdio client, the way an MCP host (Claude Desktop, Cursor, an
agent framework) starts it. No model: the test calls the tools itself."""

import asyncio
import json
import os
import threading
import http.server
import socket

import jsonschema
import pytest
from mcp import ClientSession, StdioServerParameters, types
from mcp.client.stdio import stdio_client

BIN = os.environ["AGENT_SANDBOX_BIN"]
IMAGE = os.environ.get("AGENT_SANDBOX_IMAGE", "agent-sandbox/base:bookworm")
TOOLS = {"run_command", "read_file", "write_file", "list_files", "remove_file", "start_process",
         "process_output", "stop_process", "request_access"}


@pytest.fixture
def canary():
    """A local HTTP server that counts connections: 'denied' must see none."""
    seen = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = b"hello from the canary"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    class Server(http.server.ThreadingHTTPServer):
        def get_request(self):
            conn = super().get_request()
            seen.append(1)
            return conn

    srv = Server(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv.server_address[1], seen
    srv.shutdown()


def server(workspace, *flags):
    return StdioServerParameters(
        command=BIN, args=["mcp", "--image", IMAGE, "--workspace", str(workspace), *flags],
        env={**os.environ},
    )


def structured(result: types.CallToolResult) -> dict:
    assert result.structured_content is not None, result
    return result.structured_content


@pytest.fixture
def workspace(tmp_path):
    if os.getuid() == 0:
        os.chown(tmp_path, 1000, 1000)
    return tmp_path


def test_tools_files_processes_and_refusals(workspace, canary):
    port, seen = canary

    async def main():
        params = server(workspace, "--resolve", f"denied.test:{port}:127.0.0.1")
        async with stdio_client(params) as (r, w), ClientSession(r, w) as s:
            init = await s.initialize()
            assert init.server_info.name == "agent-sandbox"
            tools = {t.name: t for t in (await s.list_tools()).tools}
            assert set(tools) == TOOLS
            for t in tools.values():
                # Every input schema is a valid JSON Schema with a description for the model.
                jsonschema.Draft202012Validator.check_schema(t.input_schema)
                assert t.input_schema["type"] == "object" and len(t.description) > 40, t
            jsonschema.validate({"command": "ls", "timeout_seconds": 5}, tools["run_command"].input_schema)
            with pytest.raises(jsonschema.ValidationError):
                jsonschema.validate({"cmd": "ls"}, tools["run_command"].input_schema)

            out = structured(await s.call_tool("run_command", {"command": "echo hi; echo err >&2; id -u; exit 3"}))
            assert out["exit_code"] == 3 and out["stdout"] == f"hi\n{os.stat(workspace).st_uid}\n"
            assert out["stderr"] == "err\n" and out["refusals"] == []

            assert not (await s.call_tool("write_file", {"path": "src/app.py", "content": "print('ok')\n"})).is_error
            assert (workspace / "src" / "app.py").read_text() == "print('ok')\n"
            got = structured(await s.call_tool("read_file", {"path": "/workspace/src/app.py"}))
            assert got["content"] == "print('ok')\n" and got["encoding"] == "utf-8"
            listing = structured(await s.call_tool("list_files", {"path": "src"}))
            assert listing["entries"] == [{"name": "app.py", "kind": "file", "size": 12}] and not listing["truncated"]
            for i in range(5):
                (workspace / f"f{i}").write_text("x")
            assert structured(await s.call_tool("list_files", {"max_entries": 2}))["truncated"] is True
            assert not (await s.call_tool("remove_file", {"path": "src/app.py"})).is_error
            assert not (workspace / "src" / "app.py").exists()

            # Errors are tool errors carrying the library's stable code.
            err = await s.call_tool("read_file", {"path": "/etc/passwd"})
            assert err.is_error and err.structured_content["code"] == "file", err
            err = await s.call_tool("process_output", {"process_id": "p99"})
            assert err.is_error and err.structured_content["code"] == "invalid_argument"

            # Background processes.
            p = structured(await s.call_tool("start_process", {"command": "for i in 1 2 3; do echo tick$i; sleep 0.2; done; exec sleep 1000"}))
            pid = p["process_id"]
            text = ""
            for _ in range(50):
                o = structured(await s.call_tool("process_output", {"process_id": pid}))
                text += o["stdout"]
                if "tick3" in text:
                    break
                await asyncio.sleep(0.1)
            assert text == "tick1\ntick2\ntick3\n" and o["running"] is True
            stopped = structured(await s.call_tool("stop_process", {"process_id": pid}))
            assert stopped == {"process_id": pid, "running": False, "exit_code": 137}

            # A denied host: the refusal names the reason, the canary saw nothing.
            out = structured(await s.call_tool("run_command", {"command": f"curl -fsS -o /dev/null http://denied.test:{port}/; echo rc=$?"}))
            assert "rc=0" not in out["stdout"]
            [refusal] = out["refusals"]
            assert refusal["host"] == "denied.test" and refusal["port"] == port
            assert refusal["reason"] == "no-matching-rule", refusal
            assert seen == []
            # request_access without --ask explains how a person can allow it.
            denied = await s.call_tool("request_access", {"host": "denied.test", "port": port, "reason": "tests"})
            assert denied.is_error and denied.structured_content["granted"] is False
            assert f"--allow denied.test:{port}" in denied.structured_content["message"]
            # It names one exact host: a wildcard, a range or a rule is refused
            # before anyone is asked.
            for wide in ["*.test", "*", "10.0.0.0/8", "denied.test:*", "GET denied.test /"]:
                r = await s.call_tool("request_access", {"host": wide, "reason": "widen"})
                assert r.is_error and r.structured_content["code"] == "invalid_argument", (wide, r)
                assert "one exact host" in r.structured_content["message"]
            # The audit log is a resource.
            audit = await s.read_resource("agent-sandbox://audit")
            events = [json.loads(l) for l in audit.contents[0].text.splitlines()]
            assert any(e["host"] == "denied.test" and e["verdict"] == "deny" for e in events)

    asyncio.run(main())


def test_request_access_asks_the_person_through_elicitation(workspace, canary):
    port, seen = canary
    asked = []

    async def answer(context, params: types.ElicitRequestParams):
        asked.append(params.message)
        return types.ElicitResult(action="accept", content={"decision": "sandbox"})

    async def main():
        params = server(workspace, "--ask", "--resolve", f"late.test:{port}:127.0.0.1")
        async with stdio_client(params) as (r, w), ClientSession(r, w, elicitation_callback=answer) as s:
            await s.initialize()
            fetch = {"command": f"curl -sS http://late.test:{port}/"}
            granted = structured(await s.call_tool("request_access", {"host": "late.test", "port": port, "reason": "fetch the fixture"}))
            assert granted == {"granted": True, "rule": f"late.test:{port}"}
            assert "fetch the fixture" in asked[0]
            out = structured(await s.call_tool("run_command", fetch))
            assert out["stdout"] == "hello from the canary" and out["refusals"] == []
            assert len(seen) == 1
            policy = json.loads((await s.read_resource("agent-sandbox://policy")).contents[0].text)
            assert f"late.test:{port}" in policy["allow"]

    asyncio.run(main())


def test_a_miss_during_a_command_is_asked_and_a_deny_reaches_nothing(workspace, canary):
    port, seen = canary

    async def answer(context, params):
        return types.ElicitResult(action="accept", content={"decision": "deny", "reason": "not for this task"})

    async def main():
        params = server(workspace, "--ask", "--resolve", f"other.test:{port}:127.0.0.1")
        async with stdio_client(params) as (r, w), ClientSession(r, w, elicitation_callback=answer) as s:
            await s.initialize()
            out = structured(await s.call_tool("run_command", {"command": f"curl -sS http://other.test:{port}/"}))
            [refusal] = out["refusals"]
            assert "not for this task" in refusal["reason"], refusal
            assert seen == []

    asyncio.run(main())


def test_a_published_port_reaches_a_server_started_by_the_agent(workspace):
    host_port = socket.socket()
    host_port.bind(("127.0.0.1", 0))
    free = host_port.getsockname()[1]
    host_port.close()

    async def main():
        (workspace / "index.html").write_text("preview\n")
        async with stdio_client(server(workspace, "--publish", f"{free}:8000")) as (r, w), ClientSession(r, w) as s:
            init = await s.initialize()
            assert f"127.0.0.1:{free}" in init.instructions
            await s.call_tool("start_process", {"command": "exec python3 -m http.server 8000 --bind 127.0.0.1"})
            body = b""
            for _ in range(100):
                try:
                    with socket.create_connection(("127.0.0.1", free), timeout=5) as c:
                        c.sendall(b"GET /index.html HTTP/1.0\r\n\r\n")
                        body = b"".join(iter(lambda: c.recv(65536), b""))
                except OSError:
                    pass
                if body.endswith(b"preview\n"):
                    break
                await asyncio.sleep(0.1)
            assert body.endswith(b"preview\n"), body
        # The server ended with the client: the port is closed.
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", free), timeout=2)

    asyncio.run(main())
