"""Typer commands for the pool: ``pool_app`` (start, status, keys) and the ``worker`` command.

Mounted by the core CLI: ``app.add_typer(pool_app, name="pool")`` and ``app.command("worker")(worker)``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

__all__ = ["pool_app", "worker"]

pool_app = typer.Typer(help="A standalone pool broker serving several client processes.", no_args_is_help=True)


@pool_app.command("start")
def start(
    workers: Annotated[int, typer.Option(help="Local worker processes to spawn.")] = 2,
    backend: Annotated[str, typer.Option(help="Adapter the local workers host: native, dspy.")] = "native",
    bind: Annotated[str | None, typer.Option(help="Address clients connect to (default: this user's pool "
                                                  "socket, which `run --backend pool` finds by itself).")] = None,
    worker_bind: Annotated[str | None, typer.Option(help="Address workers connect to, a separate socket "
                                                         "(default: this user's pool worker socket).")] = None,
    capacity: Annotated[int, typer.Option(help="Runs at once per worker.")] = 16,
    queue_size: Annotated[int, typer.Option(help="Pending requests before callers wait, then get "
                                                 "PoolSaturatedError.")] = 1000,
    curve_secret: Annotated[Path | None, typer.Option(help="The broker's .key_secret file (TCP).")] = None,
    curve_clients: Annotated[Path | None, typer.Option(help="Directory of allowed client public .key files "
                                                            "(TCP).")] = None,
    curve_workers: Annotated[Path | None, typer.Option(help="Directory of authorised worker public .key files "
                                                            "(TCP; a client key never admits a worker).")] = None,
    insecure: Annotated[bool, typer.Option("--insecure", help="Allow loopback TCP without CURVE (testing).")] = False,
    heartbeat: Annotated[float, typer.Option(help="Seconds between heartbeats.")] = 1.0,
    liveness: Annotated[int, typer.Option(help="Missed heartbeats before a worker counts as dead.")] = 3,
    db: Annotated[str | None, typer.Option(help="Store the local workers look programs up in (read-only) and "
                                               "warm aliased programs from.", envvar="STEPBRIDGE_DATABASE_URL")] = None,
    warm: Annotated[bool, typer.Option(help="Local workers build every aliased stored program at start.")] = True,
    data_root: Annotated[Path | None, typer.Option(help="Folder where local workers find corpora that clients "
                                                        "did not ship (default: none).")] = None,
) -> None:
    """Start a broker (with local workers); prints its addresses, runs until SIGTERM/Ctrl-C (drains)."""
    from stepbridge.errors import StepbridgeError

    from .address import default_addresses, default_running
    from .broker import run_broker
    from .config import PoolConfig

    if bind is None and worker_bind is None:
        try:
            bind, worker_bind = default_addresses(create=True)
        except StepbridgeError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        if default_running():
            typer.echo(f"error: a pool is already running at {bind} (`stepbridge pool status`); give --bind and "
                       "--worker-bind to start another one", err=True)
            raise typer.Exit(2)
    if (any(b and b.startswith("tcp://") for b in (bind, worker_bind)) and not curve_secret and not insecure):
        typer.echo("TCP needs CURVE keys: --curve-secret, --curve-clients and --curve-workers "
                   "(see `stepbridge pool keys`)", err=True)
        raise typer.Exit(2)
    try:
        config = PoolConfig(client_bind=bind, worker_bind=worker_bind, workers=workers, backend=backend,
                            capacity=capacity, queue_size=queue_size, curve_secret=curve_secret,
                            curve_clients=curve_clients, curve_workers=curve_workers, allow_insecure_tcp=insecure,
                            heartbeat=heartbeat, liveness=liveness, store_url=db, warm=warm if db else None,
                            data_root=data_root)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    run_broker(config)


@pool_app.command("status")
def status(
    address: Annotated[str | None, typer.Option("--pool", "--address", help="Broker address (default: "
                                                "$STEPBRIDGE_POOL, else this user's pool).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    curve_secret: Annotated[Path | None, typer.Option(help="This client's .key_secret file (TCP).")] = None,
    curve_server: Annotated[Path | None, typer.Option(help="The broker's public .key file (TCP).")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for an answer.")] = 5.0,
    wait: Annotated[float, typer.Option(help="Seconds to wait for a broker to come up (e.g. right after "
                                             "`stepbridge pool start &`); 0: fail at once.")] = 0.0,
) -> None:
    """Workers (host, pid, backend, capacity, in flight, done, failed, last heartbeat), queue, throughput."""
    from stepbridge.errors import StepbridgeError

    from .address import check_reachable, client_address
    from .net import CurveKeys
    from .pool import query_status

    curve = CurveKeys.from_files(curve_secret, curve_server) if curve_secret else None
    address, origin = client_address(address)
    deadline = time.monotonic() + wait
    try:
        while True:
            try:
                check_reachable(address, origin=origin)
                break
            except StepbridgeError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.2)
        info = query_status(address, curve=curve, timeout=timeout)
    except StepbridgeError as exc:
        if as_json:  # every error JSON under --json, as every command does
            sys.stdout.write(json.dumps({"ok": False, "error": exc.to_dict()}, indent=2, default=str) + "\n")
        else:
            typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    if as_json:
        sys.stdout.write(json.dumps(info, indent=2) + "\n")
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"[bold]{info['address']}[/] · queue {info['queue']['depth']}/{info['queue']['size']} · "
                  f"in flight {info['in_flight']} · {info['throughput_per_s']} runs/s", highlight=False)
    table = Table("worker", "host", "pid", "backend", "capacity", "in flight", "done", "failed", "last heartbeat")
    for w in info["workers"]:
        table.add_row(w["id"], w["host"], str(w["pid"]), w["backend"], str(w["capacity"]), str(w["in_flight"]),
                      str(w["done"]), str(w["failed"]), f"{w['last_heartbeat_s']:.1f}s ago")
    console.print(table)


@pool_app.command("keys")
def keys(
    directory: Annotated[Path, typer.Option("--dir", help="Where to write NAME.key and NAME.key_secret.")] = Path("."),
    name: Annotated[str, typer.Option(help="Key pair name (e.g. broker, worker1, client).")] = "broker",
) -> None:
    """Generate a CURVE key pair (NAME.key, NAME.key_secret) to encrypt and authenticate a TCP pool.

    Copy a client's or worker's public .key file into the broker's --curve-clients directory to allow it."""
    from .net import generate_keypair

    public, secret = generate_keypair(directory, name)
    typer.echo(f"public key: {public}\nsecret key: {secret} (keep private)")


def worker(
    connect: Annotated[str | None, typer.Option(help="The router/broker's worker address (ipc://PATH or "
                                                     "tcp://HOST:PORT; default: this user's pool).")] = None,
    backend: Annotated[str, typer.Option(help="Adapter to host: native, dspy, or package.module:factory.")] = "native",
    capacity: Annotated[int, typer.Option(help="Runs at once.")] = 16,
    heartbeat: Annotated[float, typer.Option(help="Seconds between heartbeats.")] = 1.0,
    liveness: Annotated[int, typer.Option(help="Missed heartbeats before the router counts as lost.")] = 3,
    db: Annotated[str | None, typer.Option(help="Store to look programs up in (read-only).",
                                           envvar="STEPBRIDGE_DATABASE_URL")] = None,
    warm: Annotated[bool | None, typer.Option("--warm/--no-warm", help="Build every aliased stored program at "
                                              "start (default: on with --db).")] = None,
    warm_ref: Annotated[list[str] | None, typer.Option(help="Also build this stored program (name, alias, hash) "
                                                             "at start.")] = None,
    curve_secret: Annotated[Path | None, typer.Option(help="This worker's .key_secret file (TCP).")] = None,
    curve_server: Annotated[Path | None, typer.Option(help="The broker's public .key file (TCP).")] = None,
    parent_pid: Annotated[int | None, typer.Option(help="Exit when this process is no longer the parent.")] = None,
    data_cache: Annotated[Path | None, typer.Option(help="Where to cache data files shipped by content "
                                                         "(default: a private temporary folder).")] = None,
    data_root: Annotated[Path | None, typer.Option(help="Folder for corpora a client did not ship "
                                                        "(default: none; such requests fail).")] = None,
    data_cache_bytes: Annotated[int, typer.Option(help="Disk the data cache may use.")] = 4 * 2**30,
) -> None:
    """Serve a pool router/broker's worker address: host one adapter, run up to CAPACITY requests at once."""
    from .address import default_addresses
    from .worker import run_worker

    code = run_worker(connect or default_addresses()[1], backend=backend, capacity=capacity, heartbeat=heartbeat,
                      liveness=liveness,
                      parent_pid=parent_pid, db=db, curve_secret=str(curve_secret) if curve_secret else None,
                      curve_server=str(curve_server) if curve_server else None, warm=list(warm_ref or []),
                      warm_aliases=warm, data_cache=data_cache, data_root=data_root,
                      data_cache_bytes=data_cache_bytes)
    raise typer.Exit(code)


if __name__ == "__main__":  # python -m stepbridge.bridge.cli start|status|keys
    pool_app()
