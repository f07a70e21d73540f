"""The one scrubbing function: known secrets by value (in every spelling), secret-shaped text, and the
process's own output. Keys here never look like keys."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from urllib.parse import quote

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from stepbridge.errors import LMError, StepError
from stepbridge.secrets import (
    MIN_SECRET_LENGTH,
    REDACTED,
    frame_might_hold_secret,
    might_hold_secret,
    register_secret,
    register_url,
    scrub,
)

KEY = "hunter2banana"
register_secret(KEY)


@pytest.mark.parametrize("text", [
    f"your key is {KEY}", f"Incorrect API key provided: {KEY}.", f"{KEY}{KEY}", f"x={quote(KEY + '!')}",
    json.dumps({"echo": KEY}),
])
def test_a_known_secret_goes_in_every_spelling(text: str) -> None:
    register_secret(KEY + "!")
    assert KEY not in scrub(text) and REDACTED in scrub(text)


def test_data_is_scrubbed_throughout_keys_included() -> None:
    data = {"a": [KEY, (1, f"k {KEY}")], KEY: {"n": 3, "none": None}}
    out = scrub(data)
    assert KEY not in json.dumps(out)
    assert out["a"][1][0] == 1 and out[REDACTED] == {"n": 3, "none": None}
    assert isinstance(out["a"][1], tuple)


@pytest.mark.parametrize(("text", "secret"), [
    ("https://alice:zz9plural@api.example.com/v1", "zz9plural"),
    ("failed to connect to alice:zz9plural@127.0.0.1:9: refused", "zz9plural"),  # as DSPy's engine prints it
    ("Cannot connect to host bob:q7-xp!2@[::1]:8000", "q7-xp!2"),
    ("postgresql://svc:s3cretpw@db.internal:5432/app", "s3cretpw"),
    ("Authorization: Bearer abc.def-123_XYZ", "abc.def-123_XYZ"),
    ("api_key='plainword1'", "plainword1"),
    ('{"api-key": "plainword2"}', "plainword2"),
    ("sk-proj-AbCdEf0123456789xyz", "AbCdEf0123456789xyz"),
])
def test_secret_shaped_text_goes_without_registration(text: str, secret: str) -> None:
    assert secret not in scrub(text), scrub(text)
    assert might_hold_secret(text) and might_hold_secret(json.dumps({"x": text}))


@pytest.mark.parametrize("text", ["Paris is the capital of France.", "see foo@bar.com at 10:30", "a: b, c -> d",
                                  "x" * 5000, "émigré naïve café", ""])
def test_ordinary_text_is_left_alone(text: str) -> None:
    assert scrub(text) == text


def test_urls_register_their_password() -> None:
    register_url("https://carol:Plum-4-tree@llm.internal/v1")
    assert "Plum-4-tree" not in scrub("the password is Plum-4-tree")


def test_secrets_shorter_than_the_minimum_are_not_scrubbed_by_value_and_say_so(
        caplog: pytest.LogCaptureFixture) -> None:
    short = "q" * (MIN_SECRET_LENGTH - 1)
    with caplog.at_level(logging.WARNING, logger="stepbridge.secrets"):
        register_secret(short, source="$SHORT_KEY")
    assert "$SHORT_KEY is shorter than" in caplog.text
    assert scrub(f"a {short} b") == f"a {short} b"
    exact = "k" * (MIN_SECRET_LENGTH - 1) + "!"
    register_secret(exact)
    assert scrub(f"a {exact} b") == f"a {REDACTED} b"


def test_typed_errors_are_scrubbed_when_made() -> None:
    err = LMError(f"LM returned HTTP 401: bad key {KEY}", status=401)
    wrapped = StepError(f"step 0 failed: {err.message}", step=0, cause=err)
    for text in (str(err), repr(err), str(wrapped), json.dumps(wrapped.to_dict())):
        assert KEY not in text


_alphabet = st.characters(min_codepoint=32, max_codepoint=0x2FF, blacklist_characters="[")


@given(before=st.text(_alphabet, max_size=30), after=st.text(_alphabet, max_size=30))
@settings(max_examples=300, deadline=None)
def test_a_known_secret_never_survives(before: str, after: str) -> None:
    text = before + KEY + after
    assert KEY not in scrub(text)
    assert KEY not in json.dumps(scrub({"k": [text]}))


@given(st.text(max_size=80))
@settings(max_examples=500, deadline=None)
def test_the_cheap_check_is_never_wrong(text: str) -> None:
    """``might_hold_secret`` may only say no when scrub changes nothing, on the text and on its JSON form
    (what storage checks)."""
    if scrub(text) != text:
        assert might_hold_secret(text)
        assert might_hold_secret(json.dumps({"x": [text]}, ensure_ascii=False))


NON_LATIN1_KEY = "clé-ключ-секрет"
register_secret(NON_LATIN1_KEY)
# pieces that make (or nearly make) secret-shaped text, mixed with bytes that are not text at all
_PIECES = ["sk-", "rk-", "AbCdEf0123456789xyz", "Bearer ", "BEARER\t", "api_key=", "API-KEY: ", "apikey", ":", "@",
           "pw@host", "u:pw@127.0.0.1", "\x85", "\xa0", "\x1c", " ", "\n", "ą", "İ", "K", KEY, NON_LATIN1_KEY]
_frames = st.one_of(
    st.binary(max_size=120),
    st.lists(st.one_of(st.sampled_from(_PIECES), st.text(max_size=6)), max_size=12).map(
        lambda parts: msgpack.packb({"outputs": {"answer": "".join(parts)}, "n": len(parts)})),
)


@given(_frames)
@settings(max_examples=700, deadline=None)
def test_the_check_on_frame_bytes_never_says_no_where_the_text_check_says_yes(frame: bytes) -> None:
    """A pool worker tests its encoded reply as bytes: it may only say no when the latin-1 reading of the
    frame (what the text check sees, and what scrub would change) holds nothing."""
    text = frame.decode("latin-1")
    if might_hold_secret(text) or scrub(text) != text:
        assert frame_might_hold_secret(frame)


@pytest.mark.parametrize("value", [KEY, NON_LATIN1_KEY, "sk-AbCdEf0123456789xyz", "Bearer abc.def-123",
                                   "API_KEY=plainword", "alice:zz9plural@api.example.com"])
def test_a_frame_holding_a_secret_is_caught(value: str) -> None:
    assert frame_might_hold_secret(msgpack.packb({"outputs": {"answer": f"x {value} y"}}))
    assert not frame_might_hold_secret(msgpack.packb({"outputs": {"answer": "a plain answer, API docs at 9"}}))


def test_the_process_output_and_logs_are_scrubbed() -> None:
    code = (
        "import logging, sys\n"
        "from stepbridge.secrets import register_secret, scrub_process_output\n"
        "logging.basicConfig()\n"  # a handler made before: its records are scrubbed by the record factory
        "scrub_process_output()\n"
        "register_secret('hunter2banana')\n"
        "print('stdout hunter2banana'); sys.stderr.write('stderr hunter2banana\\n')\n"
        "logging.getLogger('x').warning('log %s', 'hunter2banana')\n"
        "logging.getLogger('litellm').error('url http://u:pw-other-9@h/v1')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "hunter2banana" not in done.stdout + done.stderr and "pw-other-9" not in done.stderr
    assert done.stdout.count(REDACTED) == 1 and done.stderr.count(REDACTED) == 3
