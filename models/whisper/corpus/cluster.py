"""The Ray a corpus job runs on: an existing cluster (``address``: ``"auto"``, ``"host:port"``,
``"ray://host:port"``) or a local Ray started for the job on this machine, bound to loopback.

Ray maps a node or driver address of ``127.0.0.1`` to the machine's own interface
(``ray._private.services.resolve_ip_for_localhost``, on purpose since Ray's PR #1596; see Ray
issue #59110 for ``ray start --address 127.0.0.1:...``), so a local run would otherwise announce
the machine's address and its workers would talk over it. While Ray starts or connects with a
loopback address, :func:`ray_session` keeps that address as given; Ray without that function
(a later version) is left to do as it does. ``python -m models.whisper.corpus.cluster start ...``
is ``ray start`` with the same care (nodes on one machine, reachable from it only), and
:func:`stop_nodes` stops the nodes of one ``--temp-dir`` and nothing else.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
from collections.abc import Iterator

__all__ = [
    "LOOPBACK",
    "RayMissing",
    "ray_session",
    "import_ray",
    "is_loopback",
    "loopback_kept",
    "node_addresses",
    "processes_under",
    "stop_nodes",
]

LOOPBACK = "127.0.0.1"
INSTALL_HINT = "pip install 'kvgraph[ray]'"


class RayMissing(ImportError):
    """Ray (with Ray Data) is not installed."""


def import_ray():
    """``ray`` with ``ray.data``, or :class:`RayMissing` saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as e:
        raise RayMissing(f"Ray Data is not installed ({e.name or e}): {INSTALL_HINT}") from None
    return ray


def is_loopback(host: str | None) -> bool:
    """Is ``host`` (an address or ``localhost``) this machine's loopback?"""
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _host_of(address: str) -> str | None:
    """The host of ``"host:port"`` / ``"ray://host:port"`` (None for ``"auto"``)."""
    if address == "auto":
        return None
    rest = address.split("://", 1)[-1]
    return rest.rsplit(":", 1)[0] if ":" in rest else rest


@contextlib.contextmanager
def loopback_kept(ip: str | None) -> Iterator[None]:
    """While Ray starts or connects: a loopback ``ip`` stays itself (see the module's docstring)."""
    if not is_loopback(ip):
        yield
        return
    try:
        from ray._private import services
    except ImportError:
        services = None
    resolve = getattr(services, "resolve_ip_for_localhost", None)
    if resolve is None:
        yield
        return
    services.resolve_ip_for_localhost = lambda host: host if host == ip else resolve(host)
    try:
        yield
    finally:
        services.resolve_ip_for_localhost = resolve


@contextlib.contextmanager
def ray_session(
    address: str | None = None,
    *,
    num_cpus: int | None = None,
    node_ip_address: str | None = None,
    init_args: dict | None = None,
):
    """Ray connected for a job (yields the ``ray`` module); disconnected (a local Ray: stopped)
    afterwards. A Ray this process had already initialised is used as it is and left running.

    ``address`` None: a local Ray on this machine with ``num_cpus`` CPUs (default: all),
    bound to ``127.0.0.1``, no dashboard. Otherwise the cluster at ``address``; the driver's
    node address is ``node_ip_address``, by default ``127.0.0.1`` when ``address`` is on
    loopback (else Ray's choice). ``init_args``: more ``ray.init`` keyword arguments."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    args = dict(init_args or {})
    if address is None:
        ip = node_ip_address or LOOPBACK
        args.setdefault("num_cpus", num_cpus or os.cpu_count() or 1)
        args.setdefault("include_dashboard", False)
    else:
        client = address.startswith("ray://")
        ip = None if client else node_ip_address or (LOOPBACK if is_loopback(_host_of(address)) else None)
        args["address"] = address
    if ip is not None:
        args["_node_ip_address"] = ip
    with loopback_kept(ip):
        ray.init(**args)
    try:
        yield ray
    finally:
        ray.shutdown()


def node_addresses(ray) -> list[str]:
    """The addresses of the cluster's live nodes."""
    return [n["NodeManagerAddress"] for n in ray.nodes() if n.get("Alive")]


def processes_under(temp_dir: str | os.PathLike) -> list:
    """The live processes (``psutil.Process``) of the Ray nodes started with ``--temp-dir
    temp_dir`` (their command lines name it) and their children: the workers."""
    import psutil

    temp, me, found = os.fspath(temp_dir), os.getpid(), {}
    for p in psutil.process_iter(["cmdline"]):
        try:
            if p.pid != me and any(temp in a for a in p.info["cmdline"] or []):
                for q in [p, *p.children(recursive=True)]:
                    found[q.pid] = q
        except psutil.Error:
            continue
    live = []
    for p in found.values():
        try:
            if p.status() != psutil.STATUS_ZOMBIE:
                live.append(p)
        except psutil.Error:
            continue
    return live


def stop_nodes(temp_dir: str | os.PathLike, timeout: float = 3.0) -> list:
    """Stops the Ray nodes started with ``--temp-dir temp_dir`` and their workers (SIGTERM,
    then SIGKILL after ``timeout`` s); returns the processes still alive. Unlike ``ray stop``,
    which stops every Ray of this user on the machine, only these."""
    import psutil

    procs = processes_under(temp_dir)
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.terminate()
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(alive, timeout=timeout)
    return processes_under(temp_dir)


def main(argv: list[str] | None = None) -> int:
    """``python -m models.whisper.corpus.cluster start ...``: Ray's ``ray`` command with a
    loopback ``--node-ip-address`` kept as given, for clusters of several nodes on one
    machine reachable from it only (the tests', the benchmarks')."""
    import sys

    from ray.scripts.scripts import main as ray_main

    sys.argv = ["ray", *(sys.argv[1:] if argv is None else argv)]
    with loopback_kept(LOOPBACK):
        try:
            ray_main()
        except SystemExit as e:
            return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
