"""Joining Ray: this machine's (on loopback) or a cluster's at ``RAY_ADDRESS``, checked before any trial."""

from __future__ import annotations

import os
import socket
from typing import Any

from vae.errors import one_line
from vae.sweep.spec import Sweep, SweepError
from vae.tracking.store import is_server


def ray_address(flag: str | None) -> str | None:
    """The cluster to join: ``--address``, else ``RAY_ADDRESS``; None runs Ray on this machine."""
    return flag or os.environ.get("RAY_ADDRESS") or None


# Ray's switch for a single-machine Ray (its default on Windows and macOS): node addresses stay on
# 127.0.0.1. Elsewhere Ray replaces 127.0.0.1 by the machine's network address, for every node and driver.
SINGLE_MACHINE_RAY = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


# Ray (2.59 and later) turns token authentication on for the clusters `ray start` creates
TOKEN_HINT = (
    "export RAY_AUTH_MODE=token and put the cluster's token (`ray get-auth-token` on the head) in "
    "~/.ray/auth_token, or name its file in RAY_AUTH_TOKEN_PATH"
)


def keep_local_ray_on_loopback() -> None:
    """Make the Ray this process starts listen on 127.0.0.1, not on the machine's network address, where
    every host that reaches it could join. Before Ray is imported: Ray reads the switch once, at import."""
    os.environ.setdefault(SINGLE_MACHINE_RAY, "0")


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail in one line, in seconds, when nothing listens at ``address`` (Ray itself waits much longer)."""
    if address in ("auto", "local"):
        return
    host_port = address.split("://", 1)[-1].rsplit("/", 1)[0]
    host, _, port = host_port.rpartition(":")
    if not host or not port.isdigit():
        raise SweepError(f"RAY_ADDRESS={address}: not a Ray address (host:port, ray://host:port or auto)")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise SweepError(
            f"RAY_ADDRESS={address}: cannot reach a Ray cluster there ({reason}); start one with "
            "`ray start --head`, or unset RAY_ADDRESS to run the sweep on this machine"
        ) from None


def connect(address: str | None) -> None:
    """Join the Ray cluster at ``address`` (see :func:`check_reachable`), or start Ray on this machine
    (on 127.0.0.1 only: see :func:`keep_local_ray_on_loopback`)."""
    import ray
    from ray.exceptions import AuthenticationError

    try:
        # "local": a Ray of its own, never the cluster a `ray start` on this machine left in /tmp/ray, which
        # ray.init(address=None) would join
        ray.init(address=address or "local", include_dashboard=False, log_to_driver=True, configure_logging=False)
    except AuthenticationError:
        raise SweepError(
            f"RAY_ADDRESS={address}: token authentication is on but this machine has no Ray token: {TOKEN_HINT}"
        ) from None
    except (ConnectionError, RuntimeError, ValueError) as err:
        # the address answered (check_reachable): a refusal is most often a token this driver lacks
        hint = "" if os.environ.get("RAY_AUTH_MODE") == "token" else f"; if the cluster uses tokens, {TOKEN_HINT}"
        raise SweepError(f"RAY_ADDRESS={address}: cannot join the Ray cluster ({one_line(err)}){hint}") from None


def check_cluster(sweep: Sweep, uri: str) -> list[dict[str, Any]]:
    """The cluster can run this sweep's trials and reach its tracking store; returns its live nodes."""
    import ray

    nodes = [node for node in ray.nodes() if node["Alive"]]
    if len(nodes) > 1 and not is_server(uri):
        raise SweepError(
            f"the Ray cluster has {len(nodes)} nodes but the MLflow tracking URI is {uri}, a file on this "
            "machine the other nodes cannot write: start a tracking server (python -m vae.tracking.server) "
            "and set MLFLOW_TRACKING_URI=http://<its address>:5000"
        )
    wanted = sweep.spec.resources
    has = [(n["Resources"].get("CPU", 0), n["Resources"].get("GPU", 0)) for n in nodes]
    if not any(cpu >= wanted.cpu and gpu >= wanted.gpu for cpu, gpu in has):
        have = ", ".join(f"{cpu:g} CPU/{gpu:g} GPU" for cpu, gpu in has)
        raise SweepError(
            f"{sweep.path}: resources: a trial asks for {wanted.cpu:g} CPU and {wanted.gpu:g} GPU, "
            f"more than any node of the cluster has ({have})"
        )
    return nodes
