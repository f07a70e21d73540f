"""The process a ``ray`` adapter runs programs in: a pool :class:`~stepbridge.bridge.worker.Worker`
whose transport is Ray actor calls instead of a DEALER socket.

Everything a pool worker guarantees is inherited, not rewritten: the hosted adapter (native, dspy or a
factory), program definitions looked up by content hash (its cache, then the store, then the caller),
validated in full and hash-checked before anything is built; data files by sha256, verified before they
land in its own cache; run options, deadlines and cancellation; typed errors with partial traces; this
process's secrets scrubbed from every reply.

What changes is only how bytes move. A run arrives as the frames of a pool REQUEST (the same msgspec
structs, bounded and validated on decode) plus ``refs``: Ray object references to the program
definition and data files it names, each itself an encoded PROGRAM or DATA message that the caller
put in the object store once per content hash. The host reads a reference only when its caches miss,
so a definition or corpus crosses the network once per actor process, not once per run. Ray pickles
the argument lists, but nothing in them is more than bytes and opaque references: every value the
host acts on is decoded by the pool protocol (no pickle of our own anywhere).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections import OrderedDict
from typing import Any, cast

from stepbridge.errors import StepbridgeError
from stepbridge.secrets import scrub

from . import protocol as p
from .data import DEFAULT_CACHE_BYTES
from .logs import configure_process_logging
from .worker import Worker, _open_store, error_reply

__all__ = ["MAX_REFS", "RayHost", "data_key", "program_key"]

log = logging.getLogger("stepbridge.bridge.ray_host")

#: object references a host keeps to answer its own cache misses (least recently named first out)
MAX_REFS = 4096
_REQUEST = frozenset({p.Command.REQUEST})
_CONTENT = frozenset({p.Command.PROGRAM, p.Command.DATA})


def program_key(program_hash: str) -> str:
    return f"program:{program_hash}"


def data_key(digest: str) -> str:
    return f"data:{digest}"


class RayHost(Worker):
    """One Ray actor: hosts an adapter, runs up to ``capacity`` programs at once on its event loop."""

    def __init__(self, *, backend: str = "native", capacity: int = 16, adapter_options: dict[str, Any] | None = None,
                 store_url: str | None = None, warm: list[str] | None = None, warm_aliases: bool | None = None,
                 data_root: str | None = None, data_cache_bytes: int = DEFAULT_CACHE_BYTES,
                 log_level: str = "WARNING"):
        configure_process_logging(log_level, f"%(asctime)s ray-host[{os.getpid()}] %(levelname)s %(message)s")
        # a cancelled run's task may outlive its Ray call by a moment: room beyond Ray's max_concurrency, so
        # the next call is never refused "over capacity"
        super().__init__("ray", backend=backend, capacity=capacity * 2, store=_open_store(store_url),
                         worker_id=f"ray-{socket.gethostname()}-{os.getpid()}", adapter_options=adapter_options,
                         warm=warm, warm_aliases=warm_aliases, data_root=data_root, data_cache_bytes=data_cache_bytes)
        self._replies: dict[bytes, asyncio.Future[list[bytes]]] = {}
        self._refs: OrderedDict[str, Any] = OrderedDict()
        self._started: asyncio.Future[None] | None = None
        self._background: set[asyncio.Task[None]] = set()

    # -- what the adapter calls ----------------------------------------------------------------------
    async def start(self) -> dict[str, Any]:
        """Load the hosted adapter and warm stored programs (once); describe this host."""
        if self._started is None:
            self._started = asyncio.get_running_loop().create_future()
            try:
                from stepbridge.registry import load_adapter

                self.adapter = load_adapter(self.backend, **self.adapter_options)
                self.capabilities = frozenset(self.adapter.capabilities)
                await self._warm()
            except BaseException as exc:
                self._started.set_exception(exc)
                raise
            self._started.set_result(None)
        await asyncio.shield(self._started)
        return {"worker": self.worker_id, "pid": os.getpid(), "host": socket.gethostname(),
                "capabilities": sorted(self.capabilities), "warmed": list(self.warmed), "in_flight": len(self._tasks),
                "sources": dict(self.sources)}

    async def run(self, frames: list[bytes], refs: dict[str, Any]) -> list[bytes]:
        """Run one REQUEST; answer the frames of its REPLY (a typed error is a reply too)."""
        try:
            msg = p.decode(frames, allowed=_REQUEST)
        except p.ProtocolError as exc:
            return p.encode(error_reply(exc, 1))
        body = cast(p.Request, msg.body)
        try:
            await self.start()
        except Exception as exc:
            return p.encode(error_reply(exc, body.attempt), msg.request_id)
        for key, ref in list(refs.items())[:MAX_REFS]:
            self._refs[key] = ref
            self._refs.move_to_end(key)
        while len(self._refs) > MAX_REFS:
            self._refs.popitem(last=False)
        missing = self._missing(body)
        if missing:  # the caller sends the references and asks again (as a broker asks a client for data)
            return p.encode(p.Reply(attempt=body.attempt, missing=missing), msg.request_id)
        reply: asyncio.Future[list[bytes]] = asyncio.get_running_loop().create_future()
        self._replies[msg.request_id] = reply
        try:
            self._handle(cast(Any, None), msg)
            return await asyncio.shield(reply)
        except asyncio.CancelledError:  # ray.cancel: stop the run (it answers RunCancelledError to nobody)
            self._handle(cast(Any, None), p.Message(p.Command.CANCEL, msg.request_id, p.Cancel(attempt=body.attempt)))
            raise
        finally:
            self._replies.pop(msg.request_id, None)

    def _missing(self, req: p.Request) -> list[str]:
        """Content this request needs that is neither cached here nor reachable by a reference we hold."""
        out = []
        if req.program_hash not in self._programs and program_key(req.program_hash) not in self._refs:
            out.append(req.program_hash)
        for digest in sorted(set(req.data.values())):
            if data_key(digest) not in self._refs and not self.data.has(digest):
                out.append(digest)
        return out

    async def aclose(self) -> None:
        """Close the hosted adapter and remove this host's data cache (before the actor is killed)."""
        for task in list(self._tasks.values()):
            task.cancel()
        if self.adapter is not None:
            with contextlib.suppress(BaseException):
                await self.adapter.aclose()
        self.ctx.destroy(linger=0)
        self.data.close()

    # -- the worker's transport, over Ray -----------------------------------------------------------
    def _send(self, body: p.Body, request_id: bytes = b"") -> bool:
        if isinstance(body, p.Reply):
            try:
                frames = p.encode(body, request_id)
            except p.ProtocolError as exc:
                frames = p.encode(error_reply(StepbridgeError(f"the result could not be sent: {exc}"), body.attempt),
                                  request_id)
            return self._send_frames(frames)
        if isinstance(body, p.ProgramGet):
            self._spawn(self._deliver(program_key(body.program_hash), body.program_hash))
        elif isinstance(body, p.DataGet):
            self._spawn(self._deliver(data_key(body.data_hash), body.data_hash))
        return True  # STARTED, HEARTBEAT, DRAIN, DISCONNECT: Ray tracks the call and the actor itself

    def _send_frames(self, frames: list[bytes]) -> bool:
        reply = self._replies.get(frames[2])
        if reply is not None and not reply.done():
            reply.set_result(frames)
        return True

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _deliver(self, key: str, digest: str) -> None:
        """Answer the worker's PROGRAM_GET / DATA_GET from the object store (what the caller put there)."""
        is_program = key.startswith("program:")
        ref = self._refs.get(key)
        answer: p.Body
        try:
            if ref is None:
                raise StepbridgeError(f"no object reference for {key[:20]}: the caller did not send it")
            frames = await ref
            msg = p.decode(list(frames), allowed=_CONTENT)
            answer = msg.body
            got = getattr(answer, "program_hash" if is_program else "data_hash", None)
            if got != digest or isinstance(answer, p.ProgramDef) != is_program:
                raise StepbridgeError(f"the object store answered {key[:20]} with something else")
        except Exception as exc:
            error = {"type": "StorageError", "message": scrub(f"could not fetch {key[:20]}: {exc}")[:2000]}
            answer = (p.ProgramDef(program_hash=digest, error=error) if is_program
                      else p.Data(data_hash=digest, error=error))
        self._handle(cast(Any, None), p.Message(answer.command, b"", answer))
