"""The `ray job submit` workflow: a private `ray start --head` node, a real extraction job, then that node stopped.

The head node is a separate cluster from the session's `ray_cluster` fixture: it runs `ray start --head
--block` in its own process group with its own temp dir and free ports, and only that process group
(plus any process naming its temp dir) is stopped afterwards, never with `ray stop`.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
RAY = Path(sys.executable).with_name("ray")
START_TIMEOUT_S = 120
JOB_TIMEOUT_S = 420

pytestmark = [pytest.mark.ray, pytest.mark.timeout(START_TIMEOUT_S + JOB_TIMEOUT_S + 120)]


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def processes_naming(text: str) -> list[int]:
    """Process ids whose command line contains `text` (this node's temp dir)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text.encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def stop_head(process: subprocess.Popen, temp_dir: str) -> None:
    """Stop the head node this test started: its process group, then anything still naming its temp dir."""
    for sig, grace in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            pass
        for pid in processes_naming(temp_dir):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + grace
        while time.time() < deadline and (process.poll() is None or processes_naming(temp_dir)):
            time.sleep(0.5)
        if process.poll() is not None and not processes_naming(temp_dir):
            return


@pytest.fixture
def head_node():
    """Dashboard address of a private `ray start --head` node (2 CPUs), stopped afterwards."""
    if not RAY.exists():
        pytest.skip(f"no ray executable beside {sys.executable}")
    temp_dir = tempfile.mkdtemp(prefix="rr-job-", dir="/tmp")  # short: Ray's socket paths must stay short
    gcs, dashboard, client, agent_http, agent_grpc, metrics, runtime_env = free_ports(7)
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
           "PATH": f"{RAY.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("RAY_ADDRESS", None)
    log = open(Path(temp_dir) / "ray-start.log", "w")
    process = subprocess.Popen(
        [str(RAY), "start", "--head", "--block", "--num-cpus=2", "--disable-usage-stats",
         f"--temp-dir={temp_dir}", f"--port={gcs}", f"--dashboard-port={dashboard}", "--include-dashboard=true",
         "--dashboard-host=127.0.0.1", f"--ray-client-server-port={client}",
         f"--dashboard-agent-listen-port={agent_http}", f"--dashboard-agent-grpc-port={agent_grpc}",
         f"--metrics-export-port={metrics}", f"--runtime-env-agent-port={runtime_env}"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=temp_dir,
    )
    address = f"http://127.0.0.1:{dashboard}"
    try:
        client = _wait_for_job_server(address, process, Path(temp_dir) / "ray-start.log")
        yield client
    finally:
        stop_head(process, temp_dir)
        log.close()
    survivors = processes_naming(temp_dir)
    shutil.rmtree(temp_dir, ignore_errors=True)
    assert not survivors, f"processes of the test's head node survived: {survivors}"


def _wait_for_job_server(address: str, process: subprocess.Popen, log: Path):
    from ray.job_submission import JobSubmissionClient

    deadline = time.time() + START_TIMEOUT_S
    last_error = None
    while time.time() < deadline:
        if process.poll() is not None:
            pytest.skip(f"`ray start --head` exited with {process.returncode}: {log.read_text()[-800:]}")
        try:
            client = JobSubmissionClient(address)
            client.list_jobs()
            return client
        except Exception as err:  # noqa: BLE001 - not up yet; reported if it never comes up
            last_error = err
            time.sleep(1)
    pytest.skip(f"the Ray job server at {address} did not start within {START_TIMEOUT_S} s: {last_error}")


def test_submitted_extraction_job_succeeds(head_node, small_routerbench, tmp_path):
    from ray.job_submission import JobStatus

    from ray_router.features.store import FeatureStore

    out = tmp_path / "features"
    job_id = head_node.submit_job(
        entrypoint=f"python jobs/extract.py --data {small_routerbench} --encoder smollm2-135m --layers 1 "
                   f"--max-tokens 64 --limit 4 --batch-size 4 --out {out}",
        runtime_env={"working_dir": str(REPO)},
    )
    deadline = time.time() + JOB_TIMEOUT_S
    while (status := head_node.get_job_status(job_id)) not in {JobStatus.SUCCEEDED, JobStatus.FAILED,
                                                              JobStatus.STOPPED}:
        assert time.time() < deadline, f"job {job_id} still {status} after {JOB_TIMEOUT_S} s"
        time.sleep(2)
    logs = head_node.get_job_logs(job_id)
    assert status == JobStatus.SUCCEEDED, logs[-2000:]
    assert "4 queries with features (4 computed now, 0 already there)" in logs
    store = FeatureStore.open(str(out))
    assert store.manifest()["rows"] == 4
    assert list(store.schema.layers) == [1] and store.schema.max_tokens == 64
