"""A Ray cluster started as docs/sweeps.md says, with `ray start` and token authentication, runs a sweep.

Ray 2.60 replaces 127.0.0.1 by the machine's network address for every node that
`ray start` starts, and refuses a second node on a single-machine set-up. So the
commands run in a network namespace of this test's own (`unshare -n`), whose only
interface is the loopback: every node, driver and server listens on 127.0.0.1,
and nothing outside it can reach them. The namespace's processes are stopped by
process id at the end, and the test checks none is left.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import textwrap
import time
from pathlib import Path

import pytest
import yaml
from project import EXPERIMENT, free_port, mlflow_runs, new_project, readme_layout, run

pytestmark = pytest.mark.slow

SCRIPT = r"""
set -eu
ip link set lo up
echo "netns $(readlink /proc/$$/ns/net)" > netns.txt
export HOME="$PWD/home" RAY_AUTH_MODE=token MLFLOW_TRACKING_URI=http://127.0.0.1:{mlflow_port}
mkdir -p "$HOME"

stop_everything() {{  # every process of this namespace but this shell, by process id
    me=$(readlink /proc/$$/ns/net)
    for proc in /proc/[0-9]*; do
        pid=${{proc#/proc/}}
        [ "$pid" = "$$" ] && continue
        [ "$(readlink "$proc/ns/net" 2>/dev/null)" = "$me" ] && kill -9 "$pid" 2>/dev/null || true
    done
}}
trap stop_everything EXIT

# the tracking server the sweep logs to, lean as tests/project.py's MlflowServer: one worker, no job runner.
# It starts first: Ray's nodes take ports at random, and once one took the server's (an agent answered
# the sweep with HTTP 401)
MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false python -m mlflow server --host 127.0.0.1 --port {mlflow_port} --workers 1 \
    --backend-store-uri "sqlite:///$PWD/server/mlflow.db" --artifacts-destination "$PWD/server" > mlflow.log 2>&1 &
for _ in $(seq 120); do
    python -c "import urllib.request; urllib.request.urlopen('$MLFLOW_TRACKING_URI/health')" 2>/dev/null && break
    sleep 1
done

# docs/sweeps.md, on the head: a token, readable by its owner only, then the head node
ray get-auth-token --generate > /dev/null
chmod 600 "$HOME/.ray/auth_token"
ray start --head --port {ray_port} --num-cpus 1 --include-dashboard=false --disable-usage-stats > head.log 2>&1
# on every other machine, with the head's token in ~/.ray/auth_token and RAY_AUTH_MODE=token:
ray start --address 127.0.0.1:{ray_port} --num-cpus 1 --disable-usage-stats > worker.log 2>&1

RAY_ADDRESS=127.0.0.1:{ray_port} python -m vae.sweep sweeps/cli.yaml > sweep.log 2>&1 && echo ok > sweep.rc
# a driver without the token is refused, in one line that says what to set
env -u RAY_AUTH_MODE HOME="$PWD/no-token" RAY_ADDRESS=127.0.0.1:{ray_port} \
    python -m vae.sweep sweeps/cli.yaml > refused.log 2>&1 || echo $? > refused.rc
ss -ltn > listening.txt
"""


def processes_in(netns: str) -> list[int]:
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if os.readlink(proc / "ns" / "net") == netns:
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def stop_what_is_left(netns: str, grace: float = 30) -> list[int]:
    """The processes of ``netns`` still alive ``grace`` seconds after the script's own kill -9 (which
    takes a moment to land), SIGKILLed by id; an empty list when the script stopped everything."""
    deadline = time.monotonic() + grace
    while (left := processes_in(netns)) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:  # it ended meanwhile
            pass
    return left


def test_the_documented_ray_start_cluster_with_token_auth_runs_a_sweep(tmp_path: Path) -> None:
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-n", "true"]).returncode != 0:
        pytest.fail("this test needs `unshare -n` (util-linux) and the right to make a network namespace (root)")
    env = readme_layout(tmp_path)
    root = new_project(tmp_path / "main", env, train_limit=400, log_models=False)
    run(["dvc", "repro", "classifier"], root, env)
    spec = {"space": {"beta": [100, 500]}, "epochs": 1, "max_failures": 0}
    (root / "sweeps" / "cli.yaml").write_text(yaml.safe_dump(spec))
    env = {k: v for k, v in env.items() if not k.startswith("RAY_")}
    script = SCRIPT.format(ray_port=free_port(), mlflow_port=free_port())
    (root / "cluster.sh").write_text(textwrap.dedent(script))

    process = subprocess.Popen(["unshare", "-n", "bash", "cluster.sh"], cwd=root, env=env, start_new_session=True)
    try:
        process.wait(timeout=900)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
        netns = (root / "netns.txt").read_text().split()[1] if (root / "netns.txt").exists() else None
        left = stop_what_is_left(netns) if netns else []

    sweep_log = (root / "sweep.log").read_text()
    assert (root / "sweep.rc").exists(), sweep_log[-4000:]
    assert "on 2 Ray node(s)" in sweep_log
    listening = (root / "listening.txt").read_text().split("\n")[1:]
    addresses = {line.split()[3].rsplit(":", 1)[0] for line in listening if line.strip()}
    assert addresses <= {"127.0.0.1", "[::ffff:127.0.0.1]"}, addresses  # every node and server on loopback
    assert not left, f"processes left in the test's namespace: {left}"

    runs, _ = mlflow_runs(f"sqlite:///{root / 'server' / 'mlflow.db'}", EXPERIMENT)
    [parent] = [r for r in runs if r.data.tags.get("pipeline_stage") == "sweep"]
    trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(float(r.data.params["beta"]) for r in trials) == [100.0, 500.0]
    assert all(r.info.status == "FINISHED" for r in trials)
    assert len({r.data.tags["ray_node_id"] for r in trials}) == 2  # one trial on each node

    refused = (root / "refused.log").read_text().strip().splitlines()
    assert (root / "refused.rc").read_text().strip() == "1", refused
    assert refused[-1].startswith("sweep: error: RAY_ADDRESS=127.0.0.1:") and "RAY_AUTH_MODE=token" in refused[-1]
    assert "Traceback" not in "\n".join(refused)
