from evaluators.sandbox import scrubbed_env


def test_secrets_never_reach_the_child(monkeypatch):
    for name in ("OPENAI_API_KEY", "HF_TOKEN", "MY_SECRET_THING", "DB_PASSWORD", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "sk-test-SECRET")
    monkeypatch.setenv("SOME_RANDOM_VAR", "x")
    env = scrubbed_env()
    assert "sk-test-SECRET" not in " ".join(env.values())
    assert "SOME_RANDOM_VAR" not in env  # only an allowlist passes
    assert "PATH" in env
