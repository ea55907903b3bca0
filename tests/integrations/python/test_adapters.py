"""The framework adapters driven by the real frameworks' own entry points,
with scripted models (no model calls, no network)."""

import asyncio
import os

import pytest
from agent_sandbox import Sandbox

IMAGE = os.environ.get("AGENT_SANDBOX_IMAGE", "agent-sandbox/base:bookworm")


@pytest.fixture
def workspace(tmp_path):
    if os.getuid() == 0:
        os.chown(tmp_path, 1000, 1000)
    return tmp_path


def test_openai_agents_runner_uses_the_sandbox(workspace):
    from agents import RunConfig, Runner
    from agents.sandbox import Manifest, SandboxAgent, SandboxRunConfig
    from agents.testing import ScriptedModel, assistant_message, function_call
    from agent_sandbox.integrations.openai_agents import AgentSandboxClient, AgentSandboxClientOptions

    model = ScriptedModel([
        [function_call("exec_command", {"cmd": "echo hi > a.txt && cat a.txt && id -u && pwd"}, call_id="c1")],
        [{"type": "custom_tool_call", "call_id": "c2", "name": "apply_patch",
          "input": "*** Begin Patch\n*** Add File: b.txt\n+patched\n*** End Patch\n"}],
        [function_call("exec_command", {"cmd": "cat /etc/shadow; curl -fsS http://denied.test/ || echo refused"}, call_id="c3")],
        [assistant_message("done")],
    ])
    agent = SandboxAgent(name="dev", instructions="work in the sandbox", model=model,
                         default_manifest=Manifest(root="/workspace"))
    client = AgentSandboxClient()
    options = AgentSandboxClientOptions(sandbox={"image": IMAGE, "workspace": str(workspace)})

    async def main():
        return await Runner.run(agent, "go", run_config=RunConfig(
            tracing_disabled=True, sandbox=SandboxRunConfig(client=client, options=options)))

    result = asyncio.run(main())
    assert result.final_output == "done"
    model.assert_complete()
    assert (workspace / "a.txt").read_text() == "hi\n"
    assert (workspace / "b.txt").read_text().rstrip("\n") == "patched", "apply_patch wrote through the file API"
    outputs = [str(getattr(i, "output", "")) for i in result.new_items]
    assert any("hi" in o and "1000" in o and "/workspace" in o for o in outputs), outputs
    assert any("Permission denied" in o and "refused" in o for o in outputs), outputs
    tools = {getattr(t, "name", None) for t in model.calls[0].tools}
    assert {"exec_command", "apply_patch", "write_stdin"} <= tools, tools


def test_openai_agents_background_process_and_exposed_port(workspace):
    from agents.sandbox import Manifest
    from agent_sandbox.integrations.openai_agents import AgentSandboxClient, AgentSandboxClientOptions

    async def main():
        client = AgentSandboxClient()
        (workspace / "index.html").write_text("preview\n")
        s = await client.create(manifest=Manifest(root="/workspace"),
                                options=AgentSandboxClientOptions(sandbox={"image": IMAGE, "workspace": str(workspace)}))
        try:
            inner = s._inner
            first = await inner.pty_exec_start("for i in 1 2; do echo tick$i; sleep 0.3; done; sleep 1000", yield_time_s=0.2)
            assert first.process_id is not None and first.exit_code is None
            later = await inner.pty_write_stdin(session_id=first.process_id, chars="", yield_time_s=1)
            assert b"tick2" in first.output + later.output
            done = await inner.pty_exec_start("echo quick", yield_time_s=5)
            assert done.process_id is None and done.exit_code == 0 and done.output == b"quick\n"
            await inner.pty_exec_start("exec python3 -m http.server 8000 --bind 127.0.0.1", yield_time_s=0.5)
            endpoint = await inner._resolve_exposed_port(8000)
            assert endpoint.host == "127.0.0.1"
            body = b""
            for _ in range(50):
                try:
                    r, w = await asyncio.open_connection(endpoint.host, endpoint.port)
                    w.write(b"GET /index.html HTTP/1.0\r\n\r\n")
                    body = await r.read()
                    w.close()
                except OSError:
                    pass
                if body.endswith(b"preview\n"):
                    break
                await asyncio.sleep(0.1)
            assert body.endswith(b"preview\n"), body
            await inner.pty_terminate_all()
        finally:
            await client.delete(s)

    asyncio.run(main())


def test_deepagents_drives_the_backend(workspace):
    from deepagents import create_deep_agent
    from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
    from langchain_core.messages import AIMessage
    from agent_sandbox.integrations.langchain import AgentSandboxBackend

    class FakeToolModel(GenericFakeChatModel):
        def bind_tools(self, tools, *, tool_choice=None, **kwargs):
            return self

    def call(name, args, i):
        return AIMessage(content="", tool_calls=[{"name": name, "args": args, "id": f"t{i}", "type": "tool_call"}])

    model = FakeToolModel(messages=iter([
        call("write_file", {"file_path": "/workspace/h.txt", "content": "hi\n"}, 1),
        call("edit_file", {"file_path": "/workspace/h.txt", "old_string": "hi", "new_string": "hello"}, 2),
        call("execute", {"command": "cat /workspace/h.txt; curl -fsS http://denied.test/ || true"}, 3),
        call("read_file", {"file_path": "/workspace/h.txt"}, 4),
        AIMessage(content="all done"),
    ]))
    os.environ.setdefault("LANGSMITH_TRACING", "false")
    with Sandbox(image=IMAGE, workspace=workspace).session() as session:
        backend = AgentSandboxBackend(session)
        agent = create_deep_agent(model=model, backend=backend, system_prompt="test")
        out = agent.invoke({"messages": [{"role": "user", "content": "go"}]})
        assert out["messages"][-1].content == "all done"
        tool_text = [m.content for m in out["messages"] if m.type == "tool"]
        assert any("hello" in t and "refused" in t and "denied.test" in t for t in tool_text), tool_text
        assert (workspace / "h.txt").read_text() == "hello\n"
        [missing] = backend.download_files(["/workspace/nope"])
        assert missing.error == "file_not_found", missing
        [outside] = backend.upload_files([("/etc/x", b"no")])
        assert outside.error is not None


def test_the_examples_run(workspace):
    import subprocess
    import sys

    root = os.path.join(os.path.dirname(__file__), "..", "..", "..", "examples", "integrations")
    env = {**os.environ, "AGENT_SANDBOX_IMAGE": IMAGE, "LANGSMITH_TRACING": "false"}
    for name, expect in [("openai_agents_sandbox.py", "done: 42\n42 the answer is in answer.txt"),
                         ("deepagents_sandbox.py", "hello from the sandbox")]:
        (workspace / name).mkdir()
        os.chown(workspace / name, 1000, 1000) if os.getuid() == 0 else None
        p = subprocess.run([sys.executable, os.path.join(root, name), str(workspace / name)], env=env,
                           capture_output=True, text=True, timeout=300)
        assert p.returncode == 0 and expect in p.stdout, (name, p.stdout, p.stderr)
