"""The gatherings of `asanet_jax.multihost` in real two-process jax.distributed runs on
localhost: when one process fails, the others stop too, naming it, and none hangs."""

import pathlib
import socket
import subprocess
import sys
import textwrap
import types

import pytest

from asanet_jax import multihost

REPO = pathlib.Path(__file__).resolve().parents[1]

# One process: fails where its id is in FAIL, then reports what each gathering said.
PROCESS = textwrap.dedent(
    """
    import os, sys
    one = " --xla_force_host_platform_device_count=1"
    os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + one
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    from asanet_jax import multihost

    pid, port, fail, digest = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    jax.distributed.initialize(
        f"localhost:{port}", num_processes=2, process_id=pid, heartbeat_timeout_seconds=3600
    )
    failure = ValueError(f"process {pid} could not read its scenes") if str(pid) in fail else None
    try:
        done = multihost.agree(failure, digest.encode() + bytes([pid]) * (digest == "x"),
                               done=[pid], count=3)
        print("done", done)
    except ValueError as e:
        print("error:", e)
    multihost.sync("end")
    """
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def run_two(fail: str, digest: str = "d") -> list[str]:
    """Both processes' last lines, process 0 first."""
    port = str(free_port())
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", PROCESS, str(i), port, fail, digest],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    lines = []
    for proc in procs:
        out, err = proc.communicate()
        assert proc.returncode == 0, err[-3000:]
        lines.append(out.strip().splitlines()[-1])
    return lines


def test_one_process_fails_and_the_other_stops_naming_it():
    assert run_two(fail="1") == [
        "error: process(es) [1] failed; their messages say why",
        "error: process 1 could not read its scenes",
    ]
    # Both fail: each says its own reason.
    assert run_two(fail="01") == [
        "error: process 0 could not read its scenes",
        "error: process 1 could not read its scenes",
    ]


def test_the_processes_agree_on_what_was_done_or_refuse_different_work():
    assert run_two(fail="") == ["done [0, 1]", "done [0, 1]"]
    # Given different work (the digest differs by process): both refuse.
    different = "error: the processes were given different scene lists"
    assert all(line.startswith(different) for line in run_two(fail="", digest="x"))


def test_a_heartbeat_timeout_that_is_not_positive_is_refused():
    settings = types.SimpleNamespace(
        coordinator_address="localhost:1", num_processes=2, process_id=0, heartbeat_timeout_s=0
    )
    with pytest.raises(ValueError, match="heartbeat_timeout_s is 0; expected a positive"):
        multihost.initialize(settings)
