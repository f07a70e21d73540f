"""Wire protocol: round trips, and garbage never crashes the decoder."""

from __future__ import annotations

import contextlib

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from stepbridge.bridge import protocol as p
from stepbridge.errors import error_from_dict

HASH = "ab" * 32

json_scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False) | st.text()
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=20)
ids = st.binary(max_size=p.MAX_REQUEST_ID)

bodies = st.one_of(
    st.builds(p.Ready, worker_id=st.text(max_size=50), incarnation=st.integers(0, 2**31), pid=st.integers(0, 2**31),
              host=st.text(max_size=50), capacity=st.integers(1, 100_000), backend=st.sampled_from(["native", "dspy"]),
              capabilities=st.lists(st.text(max_size=20), max_size=10)),
    st.builds(p.Request, execution_id=st.text(max_size=64), program_hash=st.just(HASH),
              inputs=st.dictionaries(st.text(max_size=10), json_values, max_size=5), attempt=st.integers(1, 1000),
              budget=st.none() | st.floats(min_value=0.001, max_value=1e6),
              options=st.dictionaries(st.text(max_size=10), json_values, max_size=3),
              program=st.none() | st.dictionaries(st.text(max_size=10), json_values, max_size=3)),
    st.builds(p.Started, attempt=st.integers(1, 1000)),
    st.builds(p.Reply, attempt=st.integers(1, 1000),
              result=st.none() | st.builds(
                  p.WireResult, outputs=st.dictionaries(st.text(max_size=10), json_values, max_size=4),
                  backend=st.text(max_size=10), program_hash=st.just(HASH), execution_id=st.text(max_size=20),
                  trace=st.lists(st.builds(
                      p.WireStep, step=st.integers(0, 100), kind=st.sampled_from(["call", "map", "return"]),
                      module=st.none() | st.text(max_size=10), outputs=json_values,
                      inputs=st.dictionaries(st.text(max_size=10), json_values, max_size=3),
                      lm_calls=st.lists(st.builds(p.WireLMCall, model=st.text(max_size=10),
                                                  messages=st.lists(st.dictionaries(st.text(max_size=5), st.text()),
                                                                    max_size=3),
                                                  response=st.none() | st.text()), max_size=2),
                      duration_ms=st.floats(0, 1e6)), max_size=3),
                  usage=st.fixed_dictionaries({"prompt_tokens": st.integers(0, 10**6)}),
                  duration_ms=st.floats(0, 1e6), attempts=st.integers(1, 10)),
              error=st.none() | st.dictionaries(st.text(max_size=10), json_values, max_size=4)),
    st.builds(p.Heartbeat, in_flight=st.lists(ids, max_size=5)),
    st.builds(p.Cancel, attempt=st.integers(1, 1000)),
    st.builds(p.Drain),
    st.builds(p.Disconnect, reason=st.text(max_size=100)),
    st.builds(p.ProgramGet, program_hash=st.just(HASH)),
    st.builds(p.ProgramDef, program_hash=st.just(HASH),
              program=st.none() | st.dictionaries(st.text(max_size=5), json_values)),
    st.builds(p.Status, status=st.none() | st.dictionaries(st.text(max_size=5), json_values)),
    st.builds(p.DataGet, data_hash=st.just(HASH)),
    st.builds(p.Data, data_hash=st.just(HASH), content=st.none() | st.binary(max_size=200),
              error=st.none() | st.dictionaries(st.text(max_size=10), json_values, max_size=2)),
)


def test_every_command_has_exactly_one_role() -> None:
    assert p.CLIENT_COMMANDS.isdisjoint(p.WORKER_COMMANDS)
    assert set(p.Command) - (p.CLIENT_COMMANDS | p.WORKER_COMMANDS) == {p.Command.PROGRAM}  # router -> worker only


@settings(max_examples=100, deadline=None)
@given(body=bodies, request_id=ids)
def test_a_socket_refuses_the_other_roles_commands_before_reading_the_body(body: p.Body, request_id: bytes) -> None:
    frames = p.encode(body, request_id)
    for allowed in (p.CLIENT_COMMANDS, p.WORKER_COMMANDS):
        if body.command in allowed:
            assert p.decode(frames, allowed=allowed).body == body
        else:
            with pytest.raises(p.ProtocolError) as info:
                p.decode([*frames[:3], b"\xc1 not even msgpack"], allowed=allowed)
            assert info.value.reason == "role"


def test_requests_carry_data_hashes_not_paths() -> None:
    assert "base_dir" not in p.Request.__struct_fields__ and "base_dir" not in p.ProgramDef.__struct_fields__
    with pytest.raises(p.ProtocolError):  # a data manifest names files by sha256, nothing else
        header = p.encode(p.Request(execution_id="x", program_hash=HASH, inputs={}))[:3]
        p.decode([*header, msgspec.msgpack.encode({"execution_id": "x", "program_hash": HASH, "inputs": {},
                                                   "data": {"corpus.txt": "/etc/passwd"}})])


@settings(max_examples=200, deadline=None)
@given(body=bodies, request_id=ids)
def test_round_trip(body: p.Body, request_id: bytes) -> None:
    msg = p.decode(p.encode(body, request_id))
    assert msg.command == body.command
    assert msg.request_id == request_id
    assert msg.body == body


@settings(max_examples=200, deadline=None)
@given(frames=st.lists(st.binary(max_size=200), max_size=6))
def test_garbage_frames_only_raise_protocol_error(frames: list[bytes]) -> None:
    with contextlib.suppress(p.ProtocolError):
        p.decode(frames)


@settings(max_examples=200, deadline=None)
@given(cmd=st.integers(0, 255), rid=st.binary(max_size=80),
       data=st.binary(max_size=300) | json_values.map(msgspec.msgpack.encode))
def test_garbage_bodies_only_raise_protocol_error(cmd: int, rid: bytes, data: bytes) -> None:
    with contextlib.suppress(p.ProtocolError):
        p.decode([p.header(), bytes([cmd]), rid, data])


def test_wrong_version_is_reported_as_such() -> None:
    frames = p.encode(p.Drain())
    frames[0] = p.MAGIC + bytes([p.PROTOCOL_VERSION + 1])
    with pytest.raises(p.ProtocolError) as info:
        p.decode(frames)
    assert info.value.reason == "version"


def test_oversized_body_is_refused() -> None:
    frames = p.encode(p.Disconnect(reason="x" * 100))
    with pytest.raises(p.ProtocolError) as info:
        p.decode(frames, max_body=10)
    assert info.value.reason == "oversized"


def test_wrong_field_types_and_missing_fields_are_refused() -> None:
    bad = msgspec.msgpack.encode({"worker_id": 3})
    with pytest.raises(p.ProtocolError):
        p.decode([p.header(), bytes([p.Command.READY]), b"", bad])
    bad = msgspec.msgpack.encode({"program_hash": "not-a-hash"})
    with pytest.raises(p.ProtocolError):
        p.decode([p.header(), bytes([p.Command.PROGRAM_GET]), b"", bad])


def test_ext_types_and_deep_nesting_are_refused() -> None:
    ext = msgspec.msgpack.encode({"reason": msgspec.msgpack.Ext(1, b"x")})
    with pytest.raises(p.ProtocolError):
        p.decode([p.header(), bytes([p.Command.DISCONNECT]), b"", ext])
    deep = b"\x81\xa6inputs" + b"\x91" * 100_000 + b"\xc0"
    with pytest.raises(p.ProtocolError):
        p.decode([p.header(), bytes([p.Command.REQUEST]), b"", deep])


def test_protocol_error_keeps_its_type() -> None:
    err = error_from_dict(p.ProtocolError("bad", reason="version").to_dict())
    assert isinstance(err, p.ProtocolError) and err.reason == "version"


def test_run_result_goes_on_the_wire_without_model_dump_and_comes_back_equal() -> None:
    from stepbridge.result import LMCall, RunResult, StepTrace, Usage

    result = RunResult(
        outputs={"answer": "Paris", "n": [1, 2.5, None, {"é": True}]}, backend="native", program_hash=HASH,
        execution_id="ex-1", duration_ms=1.5, worker="w1",
        usage=Usage(prompt_tokens=3, completion_tokens=4, total_tokens=7, lm_calls=1),
        trace=[StepTrace(step=0, kind="map", module="m", module_type="predict", inputs={"q": "x"}, outputs={"a": 1},
                         lm_calls=[LMCall(model="ref", messages=[{"role": "user", "content": "hi"}], response="yo",
                                          usage={"total_tokens": 7}, latency_ms=0.5)],
                         children=[StepTrace(step=0, kind="call", module="m", outputs="x")]),
               StepTrace(step=1, kind="return", outputs={"answer": "Paris"}, error={"type": "X", "message": "m"})])
    msg = p.decode(p.encode(p.Reply(attempt=2, result=result), b"r"))  # type: ignore[arg-type]
    assert isinstance(msg.body, p.Reply) and isinstance(msg.body.result, p.WireResult)
    back = p.result_from_wire(msg.body.result)
    assert back == result
    assert back.model_dump() == result.model_dump()
    again = p.result_from_wire(msg.body.result, backend="pool", attempts=2)
    assert again.backend == "pool" and again.attempts == 2 and again.trace == result.trace
    # provider usage extras survive too (through pydantic)
    result.usage = Usage.model_validate({"prompt_tokens": 1, "cost": 0.25})
    back = p.result_from_wire(p.decode(p.encode(p.Reply(result=result)))  # type: ignore[arg-type]
                              .body.result)  # type: ignore[union-attr]
    assert back.usage == result.usage


def test_malformed_results_are_refused_by_the_decoder() -> None:
    enc = msgspec.msgpack.Encoder()
    for bad in [{}, {"outputs": {}}, {"outputs": [], "backend": "b", "program_hash": "h", "execution_id": "e"},
                {"outputs": {}, "backend": "b", "program_hash": "h", "execution_id": "e", "trace": [{"kind": "call"}]},
                {"outputs": {}, "backend": "b", "program_hash": "h", "execution_id": "e",
                 "trace": [{"step": 0, "kind": "call", "lm_calls": [{"model": 1, "messages": []}]}]}]:
        frames = [p.header(), bytes([p.Command.REPLY]), b"", enc.encode({"result": bad})]
        with pytest.raises(p.ProtocolError):
            p.decode(frames)
