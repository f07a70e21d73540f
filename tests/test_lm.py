"""LM profiles and the HTTP client: operator config decides where prompts go, never the program."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from stepbridge.errors import LMError, scrub_secrets
from stepbridge.lm import REFERENCE_PROFILE, ChatRequest, HTTPLMClient, LMProfile, load_profiles, resolve_profile
from stepbridge.program import LMConfig

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_profiles_from_file_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        '[lm.profiles.local]\nmodel = "openai/llama3"\nbase_url = "http://127.0.0.1:9/v1"\n'
        '[lm.profiles.default]\nmodel = "openai/small"\nbase_url = "http://127.0.0.1:8/v1"\napi_key_env = "MY_KEY"\n'
    )
    monkeypatch.setenv("STEPBRIDGE_CONFIG", str(config))
    profiles = load_profiles()
    assert profiles["local"].base_url == "http://127.0.0.1:9/v1"
    # env overrides the default profile's fields, keeps the rest
    monkeypatch.setenv("STEPBRIDGE_LM_MODEL", "openai/other")
    profiles = load_profiles()
    assert profiles["default"].model == "openai/other" and profiles["default"].api_key_env == "MY_KEY"

    profile, model = resolve_profile(LMConfig(profile="local"), profiles)
    assert profile.name == "local" and model == "openai/llama3"
    profile, model = resolve_profile(LMConfig(model="openai/big"), profiles)  # model override, default profile
    assert profile.name == "default" and model == "openai/big"
    with pytest.raises(LMError, match="unknown LM profile 'nope'"):
        resolve_profile(LMConfig(profile="nope"), profiles)


def test_no_profile_means_the_in_process_reference_lm() -> None:
    profile, model = resolve_profile(LMConfig(), {})
    assert profile is REFERENCE_PROFILE and profile.in_process and model == REFERENCE_PROFILE.model


def test_missing_key_variable_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STEPBRIDGE_TEST_KEY", raising=False)
    with pytest.raises(LMError, match="STEPBRIDGE_TEST_KEY is not set"):
        HTTPLMClient(LMProfile(base_url="http://127.0.0.1:9/v1", api_key_env="STEPBRIDGE_TEST_KEY"))


def test_key_is_registered_as_a_secret_and_scrubbed(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "zz-not-a-provider-prefix-0123456789"
    monkeypatch.setenv("STEPBRIDGE_TEST_KEY", secret)
    client = HTTPLMClient(LMProfile(base_url="http://127.0.0.1:9/v1", api_key_env="STEPBRIDGE_TEST_KEY"))
    assert client._headers["authorization"] == f"Bearer {secret}"
    assert secret not in scrub_secrets(f"upstream said: bad key {secret}")
    asyncio.run(client.aclose())


def test_unreachable_endpoint_is_a_retriable_lm_error() -> None:
    async def go() -> None:
        client = HTTPLMClient(LMProfile(base_url="http://127.0.0.1:9/v1", max_retries=0, timeout=2))
        try:
            await client.complete(ChatRequest(model="m", messages=[{"role": "user", "content": "hi"}]))
        finally:
            await client.aclose()

    with pytest.raises(LMError) as info:
        asyncio.run(go())
    assert info.value.retriable and "cannot reach LM" in str(info.value)


def test_exhausted_retries_keep_status(reference_lm: str) -> None:
    async def go() -> None:
        client = HTTPLMClient(LMProfile(base_url=reference_lm, max_retries=1))
        try:
            await client.complete(ChatRequest(model="openai/reference/error-429",
                                              messages=[{"role": "user", "content": "hi"}]))
        finally:
            await client.aclose()

    with pytest.raises(LMError) as info:
        asyncio.run(go())
    assert info.value.status == 429 and info.value.retriable


def test_a_second_reference_server_works_through_a_profile(tmp_path: Path) -> None:
    """Pointing base_url at any OpenAI-compatible loopback server is how users connect vLLM/Ollama/OpenAI."""
    server = subprocess.Popen([sys.executable, "-m", "stepbridge.cli", "lm", "serve", "--port", "0"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        url = line.strip().rsplit(" ", 1)[-1]
        assert url.startswith("http://127.0.0.1:") and url.endswith("/v1"), line
        env = {**os.environ, "STEPBRIDGE_LM_BASE_URL": url, "STEPBRIDGE_LM_MODEL": "openai/reference",
               "STEPBRIDGE_HOME": str(tmp_path)}
        done = subprocess.run([sys.executable, "-m", "stepbridge.cli", "run", str(EXAMPLES / "rag_qa.yaml"),
                               "-i", "question=Who created Python?", "--json"],
                              env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        requests = httpx.get(url.removesuffix("/v1") + "/_stepbridge/requests").json()["requests"]
        assert len(requests) == 1 and requests[0]["body"]["model"] == "reference"
        assert "Guido" in done.stdout
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_profile_timeout_applies_to_each_request(reference_lm: str) -> None:
    async def go() -> None:
        client = HTTPLMClient(LMProfile(base_url=reference_lm, max_retries=0, timeout=0.3))
        try:
            await client.complete(ChatRequest(model="openai/reference/slow-3000",
                                              messages=[{"role": "user", "content": "hi"}]))
        finally:
            await client.aclose()

    with pytest.raises(LMError, match=r"timed out after 0\.3s") as info:
        asyncio.run(go())
    assert info.value.retriable
