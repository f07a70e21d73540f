"""The reference LM bounded like a server (issue 9, item 6): against the real server process over
real sockets, a client claiming or sending a huge body, dripping its request, sending endless
headers, or sending malformed requests. Memory is read from the server's /proc entry; timeouts are
checked as "the server closed the connection" (the client waits far longer than the server's limit).
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from stepbridge.reference_lm import ServerURL, running_server, running_server_process

MB = 2**20
#: how long a client waits for the server to act; far above the server's 1 s request timeout here
PATIENCE = 60.0


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def server() -> Iterator[ServerURL]:
    with running_server_process(request_timeout=1.0) as url:
        assert url.pid is not None
        httpx.post(url + "/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})  # warm up
        yield url


def connect(url: ServerURL) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", url.port), timeout=PATIENCE)
    return sock


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (fails if it never does)."""
    out = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return out
        if not chunk:
            return out
        out += chunk


def send_quietly(sock: socket.socket, data: bytes) -> bool:
    """Send; False once the server has closed its side."""
    try:
        sock.sendall(data)
        return True
    except (BrokenPipeError, ConnectionResetError):
        return False


def status_and_body(raw: bytes) -> tuple[int, Any]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body) if body.strip() else None


def drip(sock: socket.socket, pieces: Iterator[bytes], most: int) -> int:
    """Send one piece every 50 ms until the server answers or closes; how many pieces went out."""
    sent = 0
    for piece in pieces:
        if sent >= most or not send_quietly(sock, piece):
            break
        sent += 1
        time.sleep(0.05)
        sock.setblocking(False)
        try:
            if sock.recv(1, socket.MSG_PEEK):
                break
        except BlockingIOError:
            pass
        finally:
            sock.setblocking(True)
            sock.settimeout(PATIENCE)
    return sent


HEAD = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"


def test_a_500_mb_body_claim_is_refused_before_it_is_read(server: ServerURL) -> None:
    assert server.pid is not None
    before = rss(server.pid)
    sock = connect(server)
    sent = 0
    if send_quietly(sock, HEAD + b"Content-Length: 500000000\r\n\r\n"):
        chunk = b"x" * MB
        while sent < 200 * MB and send_quietly(sock, chunk):
            sent += len(chunk)
    status, body = status_and_body(read_until_closed(sock))
    sock.close()
    assert status == 413 and body["error"]["code"] == "request_too_large"
    assert sent < 200 * MB  # the server closed the connection instead of reading on
    assert rss(server.pid) - before < 64 * MB


def test_a_chunked_body_without_a_length_stops_at_the_limit(server: ServerURL) -> None:
    assert server.pid is not None
    before = rss(server.pid)
    sock = connect(server)
    sent = 0
    if send_quietly(sock, HEAD + b"Transfer-Encoding: chunked\r\n\r\n"):
        chunk = b"%x\r\n%s\r\n" % (MB, b"y" * MB)
        while sent < 300 * MB and send_quietly(sock, chunk):
            sent += MB
    status, body = status_and_body(read_until_closed(sock))
    sock.close()
    assert status == 413 and body["error"]["type"] == "invalid_request_error"
    assert sent < 300 * MB
    assert rss(server.pid) - before < 64 * MB
    # and the server still answers
    ok = httpx.post(server + "/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
    assert ok.status_code == 200


def test_a_dripped_body_is_cut_off_with_a_408(server: ServerURL) -> None:
    sock = connect(server)
    sock.sendall(HEAD + b"Content-Length: 100000\r\n\r\n{")
    dripped = drip(sock, iter(lambda: b" ", None), 100_000)
    status, body = status_and_body(read_until_closed(sock))
    sock.close()
    assert status == 408 and body["error"]["code"] == "request_timeout"
    assert dripped < 100_000


@pytest.mark.parametrize("opening", [b"", b"POST /v1/chat/completions HTTP/1.1\r\n"])
def test_a_dripped_or_missing_request_head_is_cut_off(server: ServerURL, opening: bytes) -> None:
    """Slowloris: a head that never ends, or a connection that never sends anything."""
    sock = connect(server)
    if opening:
        sock.sendall(opening)
        assert drip(sock, (b"X-Drip-%d: 1\r\n" % i for i in range(2000)), 2000) < 2000
    raw = read_until_closed(sock)
    sock.close()
    assert status_and_body(raw)[0] == 408


def test_endless_headers_are_refused_and_memory_stays(server: ServerURL) -> None:
    assert server.pid is not None
    before = rss(server.pid)
    sock = connect(server)
    sent = 0
    if send_quietly(sock, b"GET /v1/models HTTP/1.1\r\nHost: x\r\n"):
        line = b"X-Big: " + b"z" * 8000 + b"\r\n"
        while sent < 100 * MB and send_quietly(sock, line * 16):
            sent += len(line) * 16
    raw = read_until_closed(sock)
    sock.close()
    assert raw.startswith(b"HTTP/1.1 400")
    assert sent < 100 * MB
    assert rss(server.pid) - before < 64 * MB


def test_the_request_log_is_a_bounded_ring() -> None:
    with running_server(log_bytes=2 * MB, log_body_bytes=256 * 1024) as url, httpx.Client() as client:
        assert url.log is not None
        big = {"messages": [{"role": "user", "content": "w " * 400_000}]}  # ~800 KB
        for _ in range(20):
            assert client.post(url + "/chat/completions", json=big).status_code == 200
        entries = url.log.entries()
        assert entries and all(e["body"].get("_truncated") for e in entries)
        assert entries[-1]["body"]["bytes"] > 256 * 1024 and len(entries[-1]["body"]["head"]) <= 4096
        small = {"messages": [{"role": "user", "content": "w " * 100_000}]}  # ~200 KB: kept whole
        for _ in range(30):
            client.post(url + "/chat/completions", json=small)
        entries = url.log.entries()
        assert entries[-1]["body"] == small
        assert 0 < len(entries) <= 11  # 2 MB of ~200 KB bodies
        over_http = client.get(url.root + "/_stepbridge/requests", params={"since": "x"})
        assert over_http.status_code == 400 and over_http.json()["error"]["param"] == "since"


# -- malformed requests: a typed 4xx, never a 500 ------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
message = st.one_of(
    json_values,
    st.fixed_dictionaries({"role": json_values, "content": json_values}),
    st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant"]),
                           "content": st.one_of(st.text(max_size=40), st.lists(json_values, max_size=3))}),
)
bodies = st.one_of(
    json_values,
    st.fixed_dictionaries({"messages": json_values}),
    st.fixed_dictionaries(
        {"messages": st.lists(message, max_size=4)},
        optional={"n": json_values | st.integers(), "stream": json_values, "stream_options": json_values,
                  "response_format": json_values, "model": st.sampled_from(["reference", "gpt-4o"]) | json_values
                  .filter(lambda v: not isinstance(v, str))},
    ),
)


@pytest.fixture(scope="module")
def in_thread() -> Iterator[tuple[ServerURL, httpx.Client]]:
    with running_server() as url, httpx.Client(timeout=PATIENCE) as client:
        yield url, client


def check(resp: httpx.Response) -> None:
    assert resp.status_code != 500, resp.text
    assert resp.status_code == 200 or 400 <= resp.status_code < 500
    if resp.status_code != 200:
        assert resp.json()["error"]["type"] == "invalid_request_error"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=bodies)
def test_any_json_body_gets_an_answer_or_a_typed_4xx(in_thread: tuple[ServerURL, httpx.Client], body: Any) -> None:
    url, client = in_thread
    check(client.post(url + "/chat/completions", content=json.dumps(body)))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=200) | st.text(max_size=200).map(lambda t: t.encode("utf-16")))
def test_any_bytes_get_a_typed_4xx(in_thread: tuple[ServerURL, httpx.Client], raw: bytes) -> None:
    url, client = in_thread
    check(client.post(url + "/chat/completions", content=raw))


@pytest.mark.parametrize("body", [
    {"messages": "hi"}, {"messages": [1]}, {"messages": [{"content": "x"}]}, {"messages": [{"role": 1}]},
    {"messages": [{"role": "user", "content": 5}]}, {"messages": [{"role": "user", "content": [1]}]},
    {"messages": [], "n": 10**30}, {"messages": [], "n": 0}, {"messages": [], "n": True},
    {"messages": [], "stream": "yes"}, {"messages": [], "model": ["x"]}, {"messages": [], "response_format": 3},
])
def test_named_malformed_bodies(in_thread: tuple[ServerURL, httpx.Client], body: Any) -> None:
    url, client = in_thread
    resp = client.post(url + "/chat/completions", content=json.dumps(body))
    assert resp.status_code == 400 and resp.json()["error"]["param"] is not None
    deep = b"[" * 5000 + b"]" * 5000
    assert client.post(url + "/chat/completions", content=deep).status_code == 400
    assert client.post(url + "/chat/completions", content=b"\xff\xfe{}").status_code == 400


def test_the_cli_serves_with_the_limits_given() -> None:
    """``stepbridge lm serve`` passes the limits on (the real CLI, a real socket)."""
    import re
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "from stepbridge.cli import main; main()", "lm", "serve",
                             "--port", "0", "--max-body-bytes", "100"], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        found = re.search(r"(http://\S+/v1)", proc.stdout.readline())
        assert found, "the server printed no URL"
        too_big = httpx.post(found.group(1) + "/chat/completions", content=b"{" + b" " * 200 + b"}")
        assert too_big.status_code == 413 and too_big.json()["error"]["code"] == "request_too_large"
        ok = httpx.post(found.group(1) + "/chat/completions", json={"messages": []})
        assert ok.status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()
