"""Multi-worker training: two workers on loopback take the same steps as one process would."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # three TensorFlow processes: ~50 s on 2 idle cores

TIMEOUT_S = 480  # generous: a loaded shared machine made it take 195 s
GLOBAL_BATCH = 64


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports the OS had free just now (all bound at once, so no repeats)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("localhost", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def start(out: Path, tf_config: dict | None, *args: str) -> subprocess.Popen:
    """``python -m recsys.models.multiworker`` writing ``out``.json and checkpoints to ``out``/."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    if tf_config:
        env["TF_CONFIG"] = json.dumps(tf_config)
    command = [sys.executable, "-m", "recsys.models.multiworker", "--out", f"{out}.json"]
    command += ["--checkpoint-dir", str(out), "--batch-size", str(GLOBAL_BATCH), *args]
    return subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def finish(processes: list[subprocess.Popen]) -> None:
    """Wait up to ``TIMEOUT_S`` in all for every process; on a failure or timeout kill the rest
    (a worker whose peer died would wait for it forever) and fail with the failed one's output."""
    deadline = time.monotonic() + TIMEOUT_S
    try:
        for proc in processes:
            output, _ = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
            assert proc.returncode == 0, output[-3000:]
    finally:
        for proc in processes:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_two_workers_take_the_same_steps_as_one_process(tmp_path):
    hosts = [f"localhost:{port}" for port in free_ports(2)]
    workers = [
        start(
            tmp_path / f"worker{i}",
            {"cluster": {"worker": hosts}, "task": {"type": "worker", "index": i}},
        )
        for i in range(2)
    ]
    # The reference: one process, the same global batch split over as many (local) replicas.
    # In-batch softmax takes its negatives within each replica's share of the batch, so only
    # the same split is the same computation; one replica over the whole batch is not.
    reference = start(tmp_path / "single", None, "--local-replicas", "2")
    finish([*workers, reference])

    reports = {
        name: json.loads((tmp_path / f"{name}.json").read_text())
        for name in ("worker0", "worker1", "single")
    }
    expected = reports["single"]["losses"]
    assert len(expected) == 8  # 256 rows / 64 per step, 2 epochs
    for name in ("worker0", "worker1"):
        assert reports[name]["replicas"] == 2
        # Same initial weights (broadcast from worker 0 / seeded), same batches, and a sum of
        # two gradients either way, which float addition gives exactly; 1e-5 relative leaves
        # room only for kernels that split work across threads differently in the two setups
        # (float32 rounding, ~1e-7 per op, grown over 8 Adam steps). A batch taken twice or
        # not at all, or an unscaled gradient, moves the loss by percents.
        np.testing.assert_allclose(reports[name]["losses"], expected, rtol=1e-5)
    # Only the chief (worker 0) keeps checkpoints.
    assert reports["worker0"]["chief"] and not reports["worker1"]["chief"]
    assert (tmp_path / "worker0" / "checkpoint").is_file()
    assert not (tmp_path / "worker1").exists()
