"""A LangChain deep agent whose filesystem and `execute` tool are an
agent-sandbox session.

A scripted chat model stands in for the LLM (pass a real one, e.g.
``model="anthropic:claude-sonnet-4-5"``, with its API key).

    pip install 'agent-sandbox[langchain]'
    python examples/integrations/deepagents_sandbox.py [WORKSPACE]
"""

import os
import sys
import tempfile

from deepagents import create_deep_agent
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage

from agent_sandbox import Sandbox
from agent_sandbox.integrations.langchain import AgentSandboxBackend


class ScriptedChatModel(GenericFakeChatModel):
    def bind_tools(self, tools, **kwargs):
        return self


def tool_call(name: str, args: dict, n: int) -> AIMessage:
    return AIMessage(content="", tool_calls=[{"name": name, "args": args, "id": f"call{n}", "type": "tool_call"}])


def main(workspace: str) -> None:
    model = ScriptedChatModel(messages=iter([
        tool_call("write_file", {"file_path": "/workspace/hello.py", "content": "print('hello from the sandbox')\n"}, 1),
        tool_call("execute", {"command": "python3 /workspace/hello.py"}, 2),
        AIMessage(content="ran hello.py"),
    ]))
    sandbox = Sandbox(workspace=workspace, allow=["pypi.org"], image=os.environ.get("AGENT_SANDBOX_IMAGE"))
    with sandbox.session() as session:
        agent = create_deep_agent(model=model, backend=AgentSandboxBackend(session))
        out = agent.invoke({"messages": [{"role": "user", "content": "write and run hello.py"}]})
        print(next(m.content for m in out["messages"] if m.type == "tool" and "hello from" in m.content))
        print(out["messages"][-1].content)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="agent-ws-"))
