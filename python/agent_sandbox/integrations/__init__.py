"""Adapters that plug agent-sandbox into agent frameworks.

- :mod:`agent_sandbox.integrations.openai_agents`: the OpenAI Agents SDK's
  sandbox client (``pip install 'agent-sandbox[openai-agents]'``).
- :mod:`agent_sandbox.integrations.langchain`: LangChain deepagents'
  ``BaseSandbox`` backend (``pip install 'agent-sandbox[langchain]'``).

Each imports its framework only when imported itself.
"""
