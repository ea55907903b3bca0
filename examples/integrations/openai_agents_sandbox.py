"""The OpenAI Agents SDK running its sandbox agent in agent-sandbox.

A scripted model stands in for the LLM (swap in a real model name, e.g.
``model="gpt-5"``, and set OPENAI_API_KEY): it runs a command and writes a
file with apply_patch; both happen inside the sandbox.

    pip install 'agent-sandbox[openai-agents]'
    python examples/integrations/openai_agents_sandbox.py [WORKSPACE]
"""

import asyncio
import os
import sys
import tempfile

from agents import RunConfig, Runner
from agents.sandbox import Manifest, SandboxAgent, SandboxRunConfig
from agents.testing import ScriptedModel, assistant_message, function_call

from agent_sandbox.integrations.openai_agents import AgentSandboxClient, AgentSandboxClientOptions


async def main(workspace: str) -> None:
    model = ScriptedModel([
        [function_call("exec_command", {"cmd": "python3 -c 'print(6*7)' > answer.txt && cat answer.txt"}, call_id="c1")],
        [{"type": "custom_tool_call", "call_id": "c2", "name": "apply_patch",
          "input": "*** Begin Patch\n*** Add File: NOTES.md\n+the answer is in answer.txt\n*** End Patch\n"}],
        [assistant_message("done: 42")],
    ])
    agent = SandboxAgent(name="dev", instructions="Work in the sandbox.", model=model,
                         default_manifest=Manifest(root="/workspace"))
    options = AgentSandboxClientOptions(sandbox={
        "workspace": workspace, "allow": ["pypi.org", "files.pythonhosted.org"],
        "image": os.environ.get("AGENT_SANDBOX_IMAGE"),
    })
    result = await Runner.run(agent, "compute the answer", run_config=RunConfig(
        tracing_disabled=True, sandbox=SandboxRunConfig(client=AgentSandboxClient(), options=options)))
    print(result.final_output)
    print(open(os.path.join(workspace, "answer.txt")).read().strip(), open(os.path.join(workspace, "NOTES.md")).read().strip())


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="agent-ws-")))
