"""The pool's wire protocol: multipart ZeroMQ frames with a msgpack body, validated on decode.

A message, as a DEALER sends it (a ROUTER sees the peer identity in front)::

    [ b"SBRG" + version byte,  command (1 byte),  request id (0..64 bytes),  msgpack body ]

The router looks only at the three header frames to route; bodies are decoded into typed,
bounded :mod:`msgspec` structs (unknown fields are ignored so a newer peer can add optional
ones; missing or mistyped fields are errors). Anything malformed, oversized, truncated or of
another protocol version raises :class:`ProtocolError`, which receivers log and drop; nothing
else ever escapes the decoder. No pickle: bodies are plain msgpack maps, lists and scalars.

Commands (who sends them):

==============  ================  =============================================================
READY           worker -> router  I am here: id, incarnation, pid, host, capacity, capabilities
REQUEST         router -> worker  run a program (execution id, attempt, remaining budget, hash)
                client -> broker  the same, with the program definition inline
STARTED         worker -> router  the request has begun (its attempt); counts as a heartbeat (this
                                  version's workers do not send it: heartbeats keep them alive)
REPLY           worker -> router  outputs and trace, or a typed error; broker -> client likewise
HEARTBEAT       both ways         I am alive; a worker lists its in-flight request ids
CANCEL          router -> worker  stop this request; client -> broker likewise
DRAIN           router -> worker  finish in-flight work, take no more, then leave;
                worker -> router  I am draining (SIGTERM): send me nothing new
DISCONNECT      both ways         I am leaving / you are refused (a reason)
PROGRAM_GET     worker -> router  send me the definition behind this hash
PROGRAM         router -> worker  the definition (or an error)
STATUS          client -> broker  describe the pool; broker -> client the description
DATA_GET        worker -> router  send me the data file behind this sha256
DATA            router -> worker  the bytes (or an error); client -> broker likewise, before the
                                  REQUEST that names them
==============  ================  =============================================================

Roles are separate sockets: a broker reads client commands (REQUEST, CANCEL, STATUS, DATA) on its
client socket and worker commands on its worker socket, and refuses anything else on each.
Requests carry no paths: data files are named by sha256 (``data``) and travel as DATA.
"""

from __future__ import annotations

import contextlib
from enum import IntEnum
from typing import Annotated, Any, ClassVar

import msgspec
from stepbridge.errors import StepbridgeError

__all__ = [
    "CLIENT_COMMANDS",
    "MAGIC",
    "MAX_BODY_BYTES",
    "PROTOCOL_VERSION",
    "WORKER_COMMANDS",
    "Body",
    "Cancel",
    "Command",
    "Data",
    "DataGet",
    "Disconnect",
    "Drain",
    "Heartbeat",
    "Message",
    "ProgramDef",
    "ProgramGet",
    "ProtocolError",
    "Ready",
    "Reply",
    "Request",
    "Started",
    "Status",
    "WireLMCall",
    "WireResult",
    "WireStep",
    "decode",
    "encode",
    "error_from_reply",
    "header",
    "result_from_wire",
    "steps_from_wire",
]

MAGIC = b"SBRG"
PROTOCOL_VERSION = 2  # 2: roles on separate sockets, data files by content (no base_dir)
MAX_BODY_BYTES = 64 * 2**20  # also the sockets' MAXMSGSIZE
MAX_REQUEST_ID = 64
MAX_WARMED = 10_000

Str200 = Annotated[str, msgspec.Meta(max_length=200)]
Str10k = Annotated[str, msgspec.Meta(max_length=10_000)]
Hash = Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{64}$")]
#: data files a request needs: corpus path (as the program names it) -> sha256 of its bytes
DataManifest = Annotated[dict[Str10k, Hash], msgspec.Meta(max_length=1000)]
NonNeg = Annotated[int, msgspec.Meta(ge=0, le=2**31)]
Attempt = Annotated[int, msgspec.Meta(ge=1, le=1000)]


class ProtocolError(StepbridgeError):
    """A frame that is not a valid message of this protocol (malformed, oversized, wrong version)."""

    def __init__(self, message: str, *, reason: str = "malformed", **kw: Any):
        super().__init__(message, **kw)
        self.reason = reason

    def details(self) -> dict[str, Any]:
        return {"reason": self.reason}


class Command(IntEnum):
    READY = 1
    REQUEST = 2
    STARTED = 3
    REPLY = 4
    HEARTBEAT = 5
    CANCEL = 6
    DRAIN = 7
    DISCONNECT = 8
    PROGRAM_GET = 9
    PROGRAM = 10
    STATUS = 11
    DATA_GET = 12
    DATA = 13


class Body(msgspec.Struct, frozen=True, omit_defaults=True):
    command: ClassVar[Command]


class Ready(Body, frozen=True):
    command = Command.READY
    worker_id: Str200
    incarnation: NonNeg
    pid: NonNeg
    host: Str200
    capacity: Annotated[int, msgspec.Meta(ge=1, le=100_000)]
    backend: Str200
    capabilities: Annotated[list[Str200], msgspec.Meta(max_length=100)]
    protocol: int = PROTOCOL_VERSION
    warmed: Annotated[list[Hash], msgspec.Meta(max_length=MAX_WARMED)] = []  # programs built from the store at start


class Request(Body, frozen=True):
    command = Command.REQUEST
    execution_id: Str200
    program_hash: Hash
    inputs: dict[str, Any]
    attempt: Attempt = 1
    budget: Annotated[float, msgspec.Meta(gt=0)] | None = None  # seconds left of the deadline
    options: dict[str, Any] = {}
    program: dict[str, Any] | None = None  # client -> broker only
    data: DataManifest = {}  # the program's data files by content
    wait: Annotated[float, msgspec.Meta(ge=0)] | None = None  # client -> broker: how long to wait for queue room


class Started(Body, frozen=True):
    command = Command.STARTED
    attempt: Attempt = 1


class WireLMCall(msgspec.Struct, frozen=True):
    """:class:`stepbridge.result.LMCall` on the wire (validated on decode, then built without pydantic)."""

    model: Str10k
    messages: list[dict[str, Any]]
    response: str | None = None
    usage: dict[str, Any] = {}
    latency_ms: float = 0.0
    cached: bool = False
    error: dict[str, Any] | None = None


class WireStep(msgspec.Struct, frozen=True):
    """:class:`stepbridge.result.StepTrace` on the wire."""

    step: int
    kind: Str200
    module: str | None = None
    module_type: str | None = None
    inputs: dict[str, Any] = {}
    outputs: Any = None
    lm_calls: list[WireLMCall] = []
    children: list[WireStep] = []
    duration_ms: float = 0.0
    error: dict[str, Any] | None = None
    pointer: str = ""
    passes: list[int] = []


class WireResult(msgspec.Struct, frozen=True):
    """:class:`stepbridge.result.RunResult` on the wire."""

    outputs: dict[str, Any]
    backend: Str200
    program_hash: Str200
    execution_id: Str200
    trace: list[WireStep] = []
    usage: dict[str, Any] = {}
    duration_ms: float = 0.0
    attempts: int = 1
    worker: Str200 | None = None


class Reply(Body, frozen=True):
    command = Command.REPLY
    attempt: Attempt = 1
    #: decoded as a WireResult; a worker may put a RunResult model here (encoded through its fields)
    result: WireResult | None = None
    error: dict[str, Any] | None = None
    trace: list[dict[str, Any]] = []  # the partial trace of a failed run
    #: broker -> client: data files the broker does not have (send them as DATA, then the request again)
    missing: Annotated[list[Hash], msgspec.Meta(max_length=1000)] = []


class Heartbeat(Body, frozen=True):
    command = Command.HEARTBEAT
    in_flight: Annotated[list[Annotated[bytes, msgspec.Meta(max_length=MAX_REQUEST_ID)]],
                         msgspec.Meta(max_length=100_000)] = []


class Cancel(Body, frozen=True):
    command = Command.CANCEL
    attempt: Attempt = 1


class Drain(Body, frozen=True):
    command = Command.DRAIN


class Disconnect(Body, frozen=True):
    command = Command.DISCONNECT
    reason: Str10k = ""


class ProgramGet(Body, frozen=True):
    command = Command.PROGRAM_GET
    program_hash: Hash


class ProgramDef(Body, frozen=True):
    command = Command.PROGRAM
    program_hash: Hash
    program: dict[str, Any] | None = None
    error: dict[str, Any] | None = None


class DataGet(Body, frozen=True):
    command = Command.DATA_GET
    data_hash: Hash


class Data(Body, frozen=True):
    command = Command.DATA
    data_hash: Hash
    content: bytes | None = None
    error: dict[str, Any] | None = None


class Status(Body, frozen=True):
    command = Command.STATUS
    status: dict[str, Any] | None = None  # None in the question, the description in the answer


BODY_TYPES: dict[Command, type[Body]] = {
    cls.command: cls
    for cls in (Ready, Request, Started, Reply, Heartbeat, Cancel, Drain, Disconnect, ProgramGet, ProgramDef, Status,
                DataGet, Data)
}


#: what each side of a broker accepts on its socket; anything else is refused before its body is read
CLIENT_COMMANDS = frozenset({Command.REQUEST, Command.CANCEL, Command.STATUS, Command.DATA})
WORKER_COMMANDS = frozenset({Command.READY, Command.STARTED, Command.REPLY, Command.HEARTBEAT, Command.DRAIN,
                             Command.DISCONNECT, Command.PROGRAM_GET, Command.DATA_GET})


def _no_ext(code: int, data: memoryview) -> Any:
    raise ValueError(f"msgpack extension type {code} is not allowed")


def _enc_hook(obj: Any) -> Any:
    """Encode pydantic models (a worker's RunResult and its trace) through their field values, so a
    result goes on the wire without a ``model_dump`` copy; anything else unknown is an error."""
    fields = getattr(obj, "__pydantic_fields__", None)
    if fields is not None:
        extra = obj.__pydantic_extra__
        return {**obj.__dict__, **extra} if extra else obj.__dict__
    if isinstance(obj, tuple | set | frozenset):
        return list(obj)
    raise TypeError(f"{type(obj).__name__} cannot go on the wire")


_DECODERS = {cmd: msgspec.msgpack.Decoder(cls, ext_hook=_no_ext) for cmd, cls in BODY_TYPES.items()}
_ENCODER = msgspec.msgpack.Encoder(enc_hook=_enc_hook)
_HEADER = MAGIC + bytes([PROTOCOL_VERSION])
_COMMAND_BYTES = {cmd: bytes([cmd]) for cmd in Command}
_COMMANDS = {int(cmd): cmd for cmd in Command}  # a dict lookup: the enum's own call costs more than the decode


def header() -> bytes:
    """The first frame of every message of this protocol version."""
    return _HEADER


class Message(msgspec.Struct, frozen=True):
    """A decoded message: its command, request id (may be empty) and typed body."""

    command: Command
    request_id: bytes
    body: Body


def encode(body: Body, request_id: bytes = b"") -> list[bytes]:
    """The frames of one message (without a routing identity)."""
    if len(request_id) > MAX_REQUEST_ID:
        raise ProtocolError(f"request id is {len(request_id)} bytes; the limit is {MAX_REQUEST_ID}", reason="oversized")
    data = _ENCODER.encode(body)
    if len(data) > MAX_BODY_BYTES:
        raise ProtocolError(f"message body is {len(data)} bytes; the limit is {MAX_BODY_BYTES}", reason="oversized")
    return [_HEADER, _COMMAND_BYTES[body.command], request_id, data]


def decode(frames: list[bytes] | list[Any], *, max_body: int = MAX_BODY_BYTES,
           allowed: frozenset[Command] | None = None) -> Message:
    """Decode and validate the frames of one message (routing identity already removed).

    Raises :class:`ProtocolError` (with ``reason`` one of ``malformed``, ``version``, ``oversized``,
    ``command``, ``role``) for anything that is not a well-formed message, or (``allowed``) a command
    this socket does not take; never anything else.
    """
    if len(frames) != 4:
        raise ProtocolError(f"expected 4 frames, got {len(frames)}", reason="malformed")
    head, cmd, request_id, data = frames
    if not (type(head) is type(cmd) is type(request_id) is type(data) is bytes):  # frames, memoryviews
        head, cmd, request_id, data = (bytes(f) for f in frames)
    if head != _HEADER:
        if len(head) == len(_HEADER) and head[:4] == MAGIC:
            raise ProtocolError(f"protocol version {head[4]} is not supported (this peer speaks {PROTOCOL_VERSION})",
                                reason="version")
        raise ProtocolError("not a stepbridge pool message (bad protocol id)", reason="malformed")
    if len(cmd) != 1:
        raise ProtocolError("the command frame must be exactly one byte", reason="malformed")
    command = _COMMANDS.get(cmd[0])
    if command is None:
        raise ProtocolError(f"unknown command {cmd[0]}", reason="command")
    if allowed is not None and command not in allowed:
        raise ProtocolError(f"{command.name} is not accepted on this socket", reason="role")
    if len(request_id) > MAX_REQUEST_ID:
        raise ProtocolError(f"request id is {len(request_id)} bytes; the limit is {MAX_REQUEST_ID}", reason="oversized")
    if len(data) > max_body:
        raise ProtocolError(f"message body is {len(data)} bytes; the limit is {max_body}", reason="oversized")
    try:
        body = _DECODERS[command].decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ProtocolError(f"invalid {command.name} body: {exc}", reason="malformed") from None
    except Exception as exc:  # ext types, nesting too deep: still just a bad frame
        raise ProtocolError(f"invalid {command.name} body: {type(exc).__name__}: {exc}", reason="malformed") from None
    return Message(command, request_id, body)


def error_from_reply(reply: Reply) -> StepbridgeError:
    """The typed error a failed REPLY carries, with its partial trace (what a worker's ``error_reply`` sent)."""
    from stepbridge.errors import error_from_dict
    from stepbridge.result import StepTrace

    exc = error_from_dict(reply.error or {"type": "StepbridgeError", "message": "a reply without a result"})
    if reply.trace:
        with contextlib.suppress(Exception):
            exc.trace = [StepTrace.model_validate(t) for t in reply.trace]
    return exc


# -- results: wire structs -> core models without a second validation ------------------------------
_USAGE_FIELDS = ("prompt_tokens", "completion_tokens", "total_tokens", "lm_calls")


def _lm_call(c: WireLMCall) -> Any:
    from stepbridge.result import LMCall, fast_construct

    return fast_construct(LMCall, {"model": c.model, "messages": c.messages, "response": c.response,
                                   "usage": c.usage, "latency_ms": c.latency_ms, "cached": c.cached,
                                   "error": c.error})


def steps_from_wire(steps: list[WireStep]) -> list[Any]:
    """StepTrace models from validated wire steps (every field given, so no pydantic pass)."""
    from stepbridge.result import StepTrace, fast_construct

    return [fast_construct(StepTrace, {
        "step": s.step, "kind": s.kind, "module": s.module, "module_type": s.module_type, "inputs": s.inputs,
        "outputs": s.outputs, "lm_calls": [_lm_call(c) for c in s.lm_calls] if s.lm_calls else [],
        "children": steps_from_wire(s.children) if s.children else [], "duration_ms": s.duration_ms,
        "error": s.error, "pointer": s.pointer, "passes": s.passes}) for s in steps]


_FIELDS_MATCH: bool | None = None


def _fields_match() -> bool:
    """The wire structs mirror the core models field for field (else build through pydantic)."""
    global _FIELDS_MATCH
    if _FIELDS_MATCH is None:
        from stepbridge.result import LMCall, RunResult, StepTrace, Usage

        _FIELDS_MATCH = (set(RunResult.model_fields) == set(WireResult.__struct_fields__)
                         and set(StepTrace.model_fields) == set(WireStep.__struct_fields__)
                         and set(LMCall.model_fields) == set(WireLMCall.__struct_fields__)
                         and set(Usage.model_fields) == set(_USAGE_FIELDS))
    return _FIELDS_MATCH


def result_from_wire(r: WireResult, *, backend: str | None = None, attempts: int | None = None) -> Any:
    """A :class:`stepbridge.result.RunResult` from a validated wire result."""
    from stepbridge.result import RunResult, Usage, fast_construct

    if not _fields_match():  # the core grew a field: slower, but still right
        data = msgspec.to_builtins(r)
        if backend is not None:
            data["backend"] = backend
        if attempts is not None:
            data["attempts"] = attempts
        return RunResult.model_validate(data)
    u = r.usage
    if all(k in _USAGE_FIELDS and type(v) is int for k, v in u.items()):
        usage = fast_construct(Usage, {k: u.get(k, 0) for k in _USAGE_FIELDS})
    else:  # extra provider fields: let pydantic sort them out (rare)
        usage = Usage.model_validate(u)
    return fast_construct(RunResult, {
        "outputs": r.outputs, "trace": steps_from_wire(r.trace), "usage": usage,
        "backend": r.backend if backend is None else backend, "program_hash": r.program_hash,
        "execution_id": r.execution_id, "duration_ms": r.duration_ms,
        "attempts": r.attempts if attempts is None else attempts, "worker": r.worker})
