"""The LLM call layer: one chat completion against any OpenAI-compatible endpoint, as a plain value.

`LLMClient.complete(system, user)` never raises for endpoint failures: every way a call can go wrong
(rate limits, server errors, timeouts, refused connections, bad keys, bad requests) comes back as a
`CallResult` whose `status` names it, so the proposer can count, log and back off without a try block
around every call. Retries of transient failures (429, 5xx, timeouts, connection errors) are the
`openai` client's own (`LLMSettings.max_retries`, which honour `Retry-After`); this layer adds only the
adaptations real endpoints need on a 400 (`max_completion_tokens` instead of `max_tokens`, no system
role, no temperature) and remembers them for later calls.

The API key never leaves this object in a result: every error text kept is scrubbed of it.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from typing import Any

import httpx2  # the openai client's transport: errors while reading a stream surface as its exceptions
import openai

from .call_status import Status

# Error words are kept short: they go into logs and the store, not into prompts.
_MAX_ERROR_CHARS = 300


@dataclass(frozen=True)
class LLMSettings:
    """How to reach and drive one chat model.

    Attributes:
        model: the model name the endpoint expects (e.g. "gpt-4o-mini", "Qwen/Qwen2.5-Coder-32B").
        base_url: the endpoint's base URL ending in /v1; None takes OPENAI_BASE_URL, else the
            client's default (api.openai.com).
        api_key_env: the NAME of the environment variable holding the key (never the key itself, so
            settings can be logged and stored).
        temperature: sampling temperature (dropped automatically if the model refuses it).
        max_tokens: the most tokens one answer may have.
        timeout_s: seconds the client waits on one HTTP attempt before it counts as a timeout.
        max_retries: retries the openai client itself makes on 408/409/429/5xx, timeouts and
            connection errors (it waits as `Retry-After` says, else with exponential backoff).
        price_in: USD per million prompt tokens (0: cost not tracked).
        price_out: USD per million completion tokens.
        stream: ask for a streamed answer (SSE) and assemble it; some gateways only stream.
    """

    model: str
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    temperature: float = 0.8
    max_tokens: int = 4096
    timeout_s: float = 120.0
    max_retries: int = 2
    price_in: float = 0.0
    price_out: float = 0.0
    stream: bool = False


@dataclass(frozen=True)
class CallResult:
    """The outcome of one `LLMClient.complete` call.

    `status` is "ok"; "truncated" (finish_reason "length": the text so far is kept); "empty" (no
    choices, or no content); or a failure: "rate_limited", "server_error", "timeout",
    "connection_error", "auth_error", "bad_request" (then `text` is ""). `error` is short words for
    failures ("" otherwise) and never contains the API key. Tokens and cost are 0 when the endpoint
    reports no usage.
    """

    status: Status
    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    latency_s: float = 0.0
    error: str = ""

    @property
    def ok(self) -> bool:
        """True when the answer has text worth parsing ("ok" or "truncated")."""
        return self.status in ("ok", "truncated")


def _mentions_unsupported(message: str, what: str) -> bool:
    """Whether a 400's message says `what` (a parameter or role name) is not supported.

    Providers word it differently ("Unsupported parameter: 'max_tokens' is not supported with this
    model", "'messages[0].role' does not support 'system'", "System role not supported"), so this
    looks for the name next to any of the usual refusals rather than one exact sentence.
    """
    text = message.lower()
    refusal = ("not supported", "unsupported", "does not support", "not allowed", "not permitted")
    return what in text and any(word in text for word in refusal)


class LLMClient:
    """One `openai.AsyncOpenAI` client plus what it has learnt about the endpoint's quirks."""

    def __init__(self, settings: LLMSettings, api_key: str) -> None:
        """Build the client. `api_key` is the key itself (see `from_env` to read it by name)."""
        if not api_key:
            raise ValueError(
                f"LLMClient needs an API key: set the environment variable {settings.api_key_env} "
                "(local servers accept any non-empty value)"
            )
        self.settings = settings
        self._api_key = api_key
        self._client = openai.AsyncOpenAI(
            api_key=api_key,
            base_url=settings.base_url,
            max_retries=settings.max_retries,
            timeout=settings.timeout_s,
        )
        # Learnt from 400 answers and kept, so the next calls do not pay the failed request again.
        self.use_max_completion_tokens = False
        self.merge_system = False
        self.drop_temperature = False

    @classmethod
    def from_env(cls, settings: LLMSettings) -> LLMClient:
        """Build a client with the key read from the variable `settings.api_key_env` names."""
        key = os.environ.get(settings.api_key_env, "")
        if not key:
            raise ValueError(
                f"environment variable {settings.api_key_env} is not set: export it with the API key "
                f"(or set api_key_env to the variable that holds it)"
            )
        return cls(settings, key)

    async def close(self) -> None:
        """Close the HTTP connections; the client cannot be used afterwards."""
        await self._client.close()

    async def complete(self, system: str, user: str) -> CallResult:
        """Ask for one answer to `system` + `user`; every endpoint failure comes back as a status."""
        start = time.perf_counter()
        # One try per adaptation at most: each 400 we can adapt to flips a flag that stays flipped,
        # so the loop ends after at most three adaptations and a final answer.
        for _ in range(4):
            try:
                result = await self._request(system, user)
            except openai.BadRequestError as exc:
                if self._adapt(exc):
                    continue
                return self._failure("bad_request", exc, start)
            except openai.APIError as exc:
                return self._failure(self._status_of(exc), exc, start)
            except httpx2.TimeoutException as exc:
                return self._failure("timeout", exc, start)
            except httpx2.TransportError as exc:
                return self._failure("connection_error", exc, start)
            return replace(result, latency_s=time.perf_counter() - start)
        return CallResult(
            status="bad_request", latency_s=time.perf_counter() - start, error="too many adaptations"
        )

    def _adapt(self, exc: openai.BadRequestError) -> bool:
        """Learn from a 400 that names something this endpoint refuses; False if nothing to learn."""
        message = f"{exc.message} {exc.param or ''}"
        if not self.use_max_completion_tokens and _mentions_unsupported(message, "max_tokens"):
            self.use_max_completion_tokens = True
            return True
        if not self.merge_system and _mentions_unsupported(message, "system"):
            self.merge_system = True
            return True
        if not self.drop_temperature and _mentions_unsupported(message, "temperature"):
            self.drop_temperature = True
            return True
        return False

    def _request_args(self, system: str, user: str) -> dict[str, Any]:
        """The keyword arguments of `chat.completions.create`, with the adaptations learnt so far."""
        s = self.settings
        if self.merge_system:
            messages = [{"role": "user", "content": f"{system}\n\n{user}" if system else user}]
        else:
            messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        args: dict[str, Any] = {"model": s.model, "messages": messages}
        if self.use_max_completion_tokens:
            args["max_completion_tokens"] = s.max_tokens
        else:
            args["max_tokens"] = s.max_tokens
        if not self.drop_temperature:
            args["temperature"] = s.temperature
        if s.stream:
            args["stream"] = True
            args["stream_options"] = {"include_usage": True}
        return args

    async def _request(self, system: str, user: str) -> CallResult:
        """One request (plus the openai client's own retries); raises the client's exceptions."""
        args = self._request_args(system, user)
        if self.settings.stream:
            return await self._request_stream(args)
        response = await self._client.chat.completions.create(**args)
        usage = response.usage
        prompt = (usage.prompt_tokens or 0) if usage else 0
        completion = (usage.completion_tokens or 0) if usage else 0
        if not response.choices:
            return self._result("", None, prompt, completion)
        choice = response.choices[0]
        return self._result(choice.message.content or "", choice.finish_reason, prompt, completion)

    async def _request_stream(self, args: dict[str, Any]) -> CallResult:
        """A streamed request: join the content deltas; usage comes on the last chunk when sent."""
        stream = await self._client.chat.completions.create(**args)
        parts: list[str] = []
        finish_reason: str | None = None
        saw_choice = False
        prompt = completion = 0
        try:
            async for chunk in stream:
                if chunk.usage is not None:
                    prompt = chunk.usage.prompt_tokens or 0
                    completion = chunk.usage.completion_tokens or 0
                for choice in chunk.choices:
                    if choice.index != 0:  # we ask for one answer; ignore any extra the server sends
                        continue
                    saw_choice = True
                    if choice.delta is not None and choice.delta.content:
                        parts.append(choice.delta.content)
                    if choice.finish_reason is not None:
                        finish_reason = choice.finish_reason
        finally:
            await stream.close()
        if not saw_choice:
            return self._result("", None, prompt, completion)
        return self._result("".join(parts), finish_reason, prompt, completion)

    def _result(self, text: str, finish_reason: str | None, prompt: int, completion: int) -> CallResult:
        """A successful HTTP answer as a result: ok, truncated or empty, with its cost."""
        s = self.settings
        if not text:
            status: Status = "empty"  # even when truncated: there is nothing to parse
        elif finish_reason == "length":
            status = "truncated"
        else:
            status = "ok"
        cost = (prompt * s.price_in + completion * s.price_out) / 1e6
        return CallResult(
            status=status,
            text=text,
            finish_reason=finish_reason,
            prompt_tokens=prompt,
            completion_tokens=completion,
            cost_usd=cost,
        )

    @staticmethod
    def _status_of(exc: openai.APIError) -> Status:
        """The status a non-400 client error maps to."""
        # APITimeoutError is a subclass of APIConnectionError: test it first.
        if isinstance(exc, openai.APITimeoutError):
            return "timeout"
        if isinstance(exc, openai.APIConnectionError):
            return "connection_error"
        if isinstance(exc, openai.RateLimitError):
            return "rate_limited"
        if isinstance(exc, (openai.AuthenticationError, openai.PermissionDeniedError)):
            return "auth_error"
        if isinstance(exc, openai.APIStatusError):
            # 404 (unknown model), 422 and other 4xx are the request's fault; 5xx the server's.
            return "server_error" if exc.status_code >= 500 else "bad_request"
        # An error event inside a stream, or an answer that does not parse: the server's fault.
        return "server_error"

    def _failure(self, status: Status, exc: BaseException, start: float) -> CallResult:
        """A failed call as a result, its error text short and scrubbed of the API key."""
        words = f"{type(exc).__name__}: {exc}"
        return CallResult(
            status=status,
            latency_s=time.perf_counter() - start,
            error=self._scrub(words)[:_MAX_ERROR_CHARS],
        )

    def _scrub(self, text: str) -> str:
        """`text` with every occurrence of the API key replaced, so results can be stored and shown."""
        return text.replace(self._api_key, "[api key]")
