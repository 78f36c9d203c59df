"""How one LLM call ended, in words both the call layer (llm_client.py) and the proposer (llm.py) use.

Apart from llm_client.py so that the proposer, which imports the openai client only inside its Ray
actor, can read the statuses without importing it.
"""

from __future__ import annotations

from typing import Literal, get_args

Status = Literal[
    "ok",
    "truncated",
    "empty",
    "rate_limited",
    "server_error",
    "timeout",
    "connection_error",
    "auth_error",
    "bad_request",
]
STATUSES: tuple[str, ...] = get_args(Status)
# The endpoint's failures (the proposer backs off after several in a row); "ok" and "truncated" calls
# answered, and whether the answer applies is the model's matter, not the endpoint's.
FAILED_CALLS: tuple[str, ...] = tuple(s for s in STATUSES if s not in ("ok", "truncated"))
