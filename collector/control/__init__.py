"""The policy control plane (DESIGN.md §Control loop), the ``control`` extension:

- ``config.py``: its settings (``extensions: control:``);
- ``snapshot.py``: per-service pattern statistics by volume (what a policy is made from);
- ``llm.py``: the LLM's answer schema, prompt, client and call budget;
- ``heuristic.py``: the deterministic volume-based policy;
- ``guardrails.py``: the checks every policy passes before it is applied;
- ``store.py``: versioned policy history (SQLite);
- ``loop.py``: the loop itself (schedule, proposal, guardrails, apply);
- ``api.py``: the policy API on the telemetry address;
- ``extension.py``: wiring, and YAML hot reload (SIGHUP / file watch).
"""
