"""LLMClient through the real openai client over HTTP to a scripted local server (no mocks of openai)."""

from __future__ import annotations

import asyncio
import socket
from dataclasses import replace
from typing import Any

import pytest
from llm_server import ScriptedServer

# the GPU image has no openai: these tests (and the LLM proposer) need it, the judge does not
pytest.importorskip("openai", reason="needs openai (the LLM proposer's client), which is not installed here")

from evolve.proposers.llm_client import CallResult, LLMClient, LLMSettings  # noqa: E402

KEY = "sk-test-SECRET-0123456789abcdef"
FAST = LLMSettings(model="m-test", timeout_s=5.0, max_retries=0, price_in=2.0, price_out=10.0)


def call(
    url: str, settings: LLMSettings = FAST, calls: int = 1, system: str = "sys", user: str = "usr"
) -> tuple[list[CallResult], LLMClient]:
    """Make `calls` sequential complete() calls with one client against `url`."""

    async def run() -> tuple[list[CallResult], LLMClient]:
        client = LLMClient(replace(settings, base_url=url), KEY)
        try:
            return [await client.complete(system, user) for _ in range(calls)], client
        finally:
            await client.close()

    return asyncio.run(run())


def assert_no_key(result: CallResult) -> None:
    assert KEY not in result.error and KEY not in result.text
    assert KEY[8:20] not in result.error  # not even a recognisable piece of it


def test_ok_with_usage_and_cost() -> None:
    usage = {"prompt_tokens": 1000, "completion_tokens": 500, "total_tokens": 1500}
    with ScriptedServer([{"text": "def kernel(): pass", "usage": usage}]) as srv:
        [res], _ = call(srv.url, system="be brief", user="write a kernel")
        sent = srv.requests[0]
    assert res.status == "ok" and res.ok
    assert res.text == "def kernel(): pass" and res.finish_reason == "stop"
    assert (res.prompt_tokens, res.completion_tokens) == (1000, 500)
    assert res.cost_usd == pytest.approx(1000 * 2.0 / 1e6 + 500 * 10.0 / 1e6)
    assert res.latency_s > 0 and res.error == ""
    assert sent.path == "/v1/chat/completions"
    assert sent.authorization == f"Bearer {KEY}"
    assert sent.body["model"] == "m-test"
    assert sent.body["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "write a kernel"},
    ]
    assert sent.body["max_tokens"] == 4096 and "max_completion_tokens" not in sent.body
    assert sent.body["temperature"] == 0.8
    assert "stream" not in sent.body


def test_usage_missing_gives_zero_tokens_and_cost() -> None:
    with ScriptedServer([{"text": "x", "usage": None}]) as srv:
        [res], _ = call(srv.url)
    assert res.status == "ok"
    assert (res.prompt_tokens, res.completion_tokens, res.cost_usd) == (0, 0, 0.0)


def test_truncated_keeps_text() -> None:
    with ScriptedServer([{"text": "def half", "finish_reason": "length"}]) as srv:
        [res], _ = call(srv.url)
    assert res.status == "truncated" and res.ok
    assert res.text == "def half" and res.finish_reason == "length"


def test_empty_choices_and_empty_content() -> None:
    with ScriptedServer([{"no_choices": True}, {"text": ""}]) as srv:
        [no_choices, no_text], _ = call(srv.url, calls=2)
    assert no_choices.status == "empty" and not no_choices.ok and no_choices.text == ""
    assert no_choices.prompt_tokens == 11  # usage still counted: the tokens were paid for
    assert no_text.status == "empty" and no_text.finish_reason == "stop"


def test_429_with_retry_after_then_ok_uses_the_clients_retry() -> None:
    script = [{"status": 429, "headers": {"Retry-After": "0"}, "error": "slow down"}, {"text": "fine"}]
    with ScriptedServer(script) as srv:
        [res], _ = call(srv.url, replace(FAST, max_retries=1))
        n = len(srv.requests)
    assert res.status == "ok" and res.text == "fine"
    assert n == 2


def test_429_every_time_is_rate_limited() -> None:
    always_429 = {"status": 429, "headers": {"retry-after-ms": "1"}, "error": "quota {auth}"}
    with ScriptedServer(default=always_429) as srv:
        [res], _ = call(srv.url, replace(FAST, max_retries=2))
        n = len(srv.requests)
    assert res.status == "rate_limited" and not res.ok and res.text == ""
    assert n == 3  # the first try and the client's two retries
    assert "429" in res.error and "[api key]" in res.error  # the echoed key was scrubbed
    assert_no_key(res)


def test_500_is_server_error() -> None:
    with ScriptedServer(default={"status": 500, "error": "boom"}) as srv:
        [res], _ = call(srv.url)
    assert res.status == "server_error" and "boom" in res.error
    assert_no_key(res)


def test_timeout() -> None:
    with ScriptedServer([{"text": "late", "delay_s": 1.5}]) as srv:
        [res], _ = call(srv.url, replace(FAST, timeout_s=0.3))
    assert res.status == "timeout" and res.text == ""
    assert 0.25 < res.latency_s < 1.4
    assert_no_key(res)


def test_connection_refused() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    [res], _ = call(f"http://127.0.0.1:{port}/v1")
    assert res.status == "connection_error" and res.text == ""
    assert_no_key(res)


def test_auth_error_scrubs_an_echoed_key() -> None:
    with ScriptedServer(default={"status": 401, "error": "Incorrect API key provided: {auth}"}) as srv:
        [res], _ = call(srv.url)
        sent = srv.requests[0]
    assert sent.authorization == f"Bearer {KEY}"  # the key did travel, where it belongs
    assert res.status == "auth_error" and "Incorrect API key" in res.error
    assert_no_key(res)


def test_unrelated_400_is_bad_request_without_retry() -> None:
    with ScriptedServer(default={"status": 400, "error": "context length exceeded"}) as srv:
        [res], _ = call(srv.url)
        n = len(srv.requests)
    assert res.status == "bad_request" and "context length" in res.error
    assert n == 1
    assert_no_key(res)


def test_max_tokens_unsupported_switches_to_max_completion_tokens_and_remembers() -> None:
    refusal = {
        "status": 400,
        "error": "Unsupported parameter: 'max_tokens' is not supported with this model. "
        "Use 'max_completion_tokens' instead.",
    }
    with ScriptedServer([refusal, {"text": "a"}, {"text": "b"}]) as srv:
        [first, second], client = call(srv.url, calls=2)
        bodies = [r.body for r in srv.requests]
    assert (first.status, first.text, second.status, second.text) == ("ok", "a", "ok", "b")
    assert len(bodies) == 3  # refused, adapted retry, then the second call straight away
    assert bodies[0]["max_tokens"] == 4096 and "max_completion_tokens" not in bodies[0]
    for body in bodies[1:]:
        assert body["max_completion_tokens"] == 4096 and "max_tokens" not in body
    assert client.use_max_completion_tokens


def test_system_role_unsupported_merges_into_user_and_remembers() -> None:
    refusal = {"status": 400, "error": "Unsupported value: 'messages[0].role' does not support 'system'."}
    with ScriptedServer([refusal, {"text": "a"}, {"text": "b"}]) as srv:
        results, client = call(srv.url, calls=2, system="SYS", user="USR")
        bodies = [r.body for r in srv.requests]
    assert [r.status for r in results] == ["ok", "ok"]
    assert len(bodies) == 3
    assert bodies[0]["messages"][0] == {"role": "system", "content": "SYS"}
    for body in bodies[1:]:
        assert body["messages"] == [{"role": "user", "content": "SYS\n\nUSR"}]
    assert client.merge_system


def test_temperature_unsupported_is_dropped() -> None:
    refusal = {
        "status": 400,
        "error": "Unsupported value: 'temperature' does not support 0.8 with this model.",
    }
    with ScriptedServer([refusal, {"text": "a"}]) as srv:
        [res], _ = call(srv.url)
        bodies = [r.body for r in srv.requests]
    assert res.status == "ok"
    assert bodies[0]["temperature"] == 0.8 and "temperature" not in bodies[1]


def test_two_adaptations_in_a_row() -> None:
    script: list[dict[str, Any]] = [
        {"status": 400, "error": "'max_tokens' is not supported with this model"},
        {"status": 400, "error": "System role not supported"},
        {"text": "done"},
    ]
    with ScriptedServer(script) as srv:
        [res], _ = call(srv.url)
        last = srv.requests[-1].body
    assert res.status == "ok" and res.text == "done"
    assert len(srv.requests) == 3
    assert "max_completion_tokens" in last and last["messages"][0]["role"] == "user"


def test_streaming_assembled_with_usage() -> None:
    text = "def kernel(a, b):\n    return a @ b\n"
    usage = {"prompt_tokens": 300, "completion_tokens": 40, "total_tokens": 340}
    with ScriptedServer([{"text": text, "stream": True, "usage": usage}]) as srv:
        [res], _ = call(srv.url, replace(FAST, stream=True))
        sent = srv.requests[0].body
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    assert res.status == "ok" and res.text == text and res.finish_reason == "stop"
    assert (res.prompt_tokens, res.completion_tokens) == (300, 40)
    assert res.cost_usd == pytest.approx((300 * 2.0 + 40 * 10.0) / 1e6)


def test_streaming_truncated_without_usage_and_empty() -> None:
    script = [
        {"text": "abcdefghij", "stream": True, "finish_reason": "length", "usage": None},
        {"stream": True, "no_choices": True},
    ]
    with ScriptedServer(script) as srv:
        [trunc, empty], _ = call(srv.url, replace(FAST, stream=True), calls=2)
    assert trunc.status == "truncated" and trunc.text == "abcdefghij"
    assert (trunc.prompt_tokens, trunc.cost_usd) == (0, 0.0)
    assert empty.status == "empty" and empty.text == ""


def test_missing_key_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EVOLVE_TEST_NO_SUCH_KEY", raising=False)
    with pytest.raises(ValueError, match="EVOLVE_TEST_NO_SUCH_KEY"):
        LLMClient.from_env(LLMSettings(model="m", api_key_env="EVOLVE_TEST_NO_SUCH_KEY"))


def test_adaptation_is_tried_once_then_bad_request() -> None:
    # An endpoint that keeps refusing: one adapted retry, then the 400 stands (no loop of retries).
    with ScriptedServer(default={"status": 400, "error": "'max_tokens' is not supported {auth}"}) as srv:
        [res], _ = call(srv.url)
        n = len(srv.requests)
    assert res.status == "bad_request" and n == 2
    assert_no_key(res)
