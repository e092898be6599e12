"""Data parallel through torchrun on CPU (gloo, 2 ranks): the arithmetic of a DDP step with
accumulation, no_sync really skipping the all-reduce, `b3 step --nproc-per-node`, and faults
that end in one line."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from b3core.measuring.result import DistributedInfo
from b3core.workloads.training import train_step
from tests.cli_helpers import b3

pytestmark = pytest.mark.untimed  # nothing here asserts on speed

HERE = Path(__file__).parent


def torchrun(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone",
         *args],
        capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp") / "out.json"
    proc = torchrun(str(HERE / "ddp" / "equivalence.py"), str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.slow
def test_two_ranks_with_accumulation_leave_the_weights_of_one_process_on_the_global_batch(
    ddp_run,
):
    sys.path.insert(0, str(HERE / "ddp"))
    try:
        import equivalence
    finally:
        sys.path.pop(0)
    reference = equivalence.model()
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.1)
    train_step(reference, optimizer, [equivalence.global_batch()])
    expected = [p.detach() for p in reference.parameters()]
    for rank_weights in ddp_run["weights"]:
        for got, want in zip(rank_weights, expected):
            assert torch.allclose(torch.tensor(got, dtype=torch.float64), want, rtol=0, atol=1e-10)


@pytest.mark.slow
def test_no_sync_leaves_one_all_reduce_pass_per_optimizer_step(ddp_run):
    """With 3 micro-batches, the comm hook runs as often as with 1: once per bucket per step."""
    assert ddp_run["calls_with_one"] >= 1
    assert ddp_run["calls_with_k"] == ddp_run["calls_with_one"]


@pytest.mark.slow
def test_b3_step_on_two_ranks_states_the_world_and_every_ranks_times(tmp_path):
    out = tmp_path / "step.json"
    proc = b3(
        "step", "--model", "simple_cnn", "--batch-size", "16", "--nproc-per-node", "2",
        "--device", "cpu", "--accumulation-steps", "2", "--repeats", "4", "--json", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("simple_cnn/train") == 1  # rank 0 alone prints
    result = json.loads(out.read_text())["result"]
    ranks = result["distributed"]
    assert (ranks["world_size"], ranks["global_batch_size"], ranks["backend"]) == (2, 64, "gloo")
    assert len(ranks["rank_times"]) == 2 and all(len(t) == 4 for t in ranks["rank_times"])
    slowest = [max(pair) for pair in zip(*ranks["rank_times"])]
    assert result["measurement"]["times_s"] == pytest.approx(slowest)
    assert result["measurement"]["samples_per_step"] == 64  # global samples per step
    assert -1 < ranks["comm_share"] < 1


@pytest.mark.slow
def test_torchrun_runs_b3_directly(tmp_path):
    out = tmp_path / "step.json"
    proc = torchrun(
        "-m", "b3core.cli", "step", "--batch-size", "8", "--device", "cpu", "--repeats", "3",
        "--json", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(out.read_text())["result"]["distributed"]["global_batch_size"] == 16


DYING_NET = """
import os
from torch import nn

CALLS = [0]

class DiesOnRankOne(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        CALLS[0] += 1
        if os.environ.get("RANK") == "1" and CALLS[0] == 3:
            os._exit(7)
        return self.fc(x)

def dies(num_classes):
    return DiesOnRankOne(num_classes)
dies.b3_input_shape = (8,)
"""


@pytest.mark.slow
def test_a_rank_that_dies_ends_the_run_in_one_line_that_names_it(tmp_path):
    (tmp_path / "dying_net.py").write_text(DYING_NET)
    proc = b3(
        "step", "--model", "dying_net:dies", "--batch-size", "4", "--nproc-per-node", "2",
        "--device", "cpu", pythonpath=tmp_path, timeout=400,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "rank 1 failed (exit 7)" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_a_taken_rendezvous_port_is_one_line_and_exit_2():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = b3(
            "step", "--batch-size", "4", "--nproc-per-node", "2", "--device", "cpu",
            "--rdzv-endpoint", f"127.0.0.1:{port}", timeout=200,
        )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "could not meet at 127.0.0.1" in lines[0], proc.stderr


def test_bad_input_is_refused_before_any_rank_starts():
    proc = b3("step", "--model", "resnet_18", "--batch-size", "4", "--nproc-per-node", "2")
    assert proc.returncode == 2 and "unknown model 'resnet_18'" in proc.stderr
    assert proc.stderr.count("\n") == 1 and "rank" not in proc.stderr


def test_each_timed_block_starts_at_a_barrier_outside_the_clock(monkeypatch):
    """One rank in-process (a world of 1, gloo): every timed block and every block of the
    all-reduce share begins with a barrier."""
    from b3core.measuring import runner
    from b3core.measuring.distributed import process_group
    from b3core.spec.step import StepSpec, Timing

    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    world = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1"}
    for key, value in {**world, "MASTER_PORT": str(port)}.items():
        monkeypatch.setenv(key, value)
    events = []
    real_barrier, real_time = torch.distributed.barrier, runner.time_block
    monkeypatch.setattr(torch.distributed, "barrier", lambda: events.append("barrier"))
    monkeypatch.setattr(
        runner, "time_block", lambda *a, **k: events.append("block") or real_time(*a, **k)
    )
    with process_group(torch.device("cpu")):
        result = runner.measure(StepSpec("simple_cnn", 4, device="cpu"), Timing(repeats=3))
        timed = events[events.index("barrier") :]  # the warm-up's blocks come first
        real_barrier()
    assert result.distributed.world_size == 1 and len(result.distributed.rank_times[0]) == 3
    assert timed == ["barrier", "block"] * (3 + 2 * runner.COMM_PAIRS)
    assert events[-1] == "barrier"  # the ranks meet again before the group is torn down


def test_each_rank_is_pinned_to_its_own_gpu(monkeypatch):
    from b3core.errors import B3Error
    from b3core.workloads.devices import rank_device

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert rank_device(torch.device("cuda")) == torch.device("cuda", 1)
    assert rank_device(torch.device("cpu")) == torch.device("cpu")
    monkeypatch.setenv("LOCAL_RANK", "2")
    with pytest.raises(B3Error, match="local rank 2 has no GPU"):
        rank_device(torch.device("cuda"))


def test_the_global_batch_and_straggler_arithmetic():
    info = DistributedInfo(
        world_size=4,
        backend="gloo",
        per_rank_batch=16,
        accumulation_steps=2,
        rank_times=((1.0, 1.0), (1.1, 1.1), (1.2, 1.2), (2.0, 2.0)),
        comm_share=0.25,
    )
    assert info.global_batch_size == 128
    assert info.straggler_spread == pytest.approx(2.0 / 1.15)
    assert DistributedInfo.from_dict(json.loads(json.dumps(info.to_dict()))) == info


# --- scaling ----------------------------------------------------------------------------------


def recorded(world: int, per_rank_batch: int, block_times: tuple[float, ...]):
    from b3core.measuring.result import PeakMemory, StepResult
    from b3core.measuring.stats import Measurement
    from b3core.spec.step import StepSpec

    info = DistributedInfo(world, "gloo", per_rank_batch, 1, (block_times,) * world, 0.1)
    samples = per_rank_batch * world
    measurement = Measurement(block_times, samples, 2, "blocked")  # 2 steps per block
    return StepResult(
        StepSpec("simple_cnn", per_rank_batch), measurement, PeakMemory(1, None, "x"), "cpu",
        distributed=info,
    )  # fmt: skip


def test_the_scaling_arithmetic_on_recorded_times():
    from b3core.reports.scaling_report import scaling_frame
    from b3core.studies.scaling import efficiency

    one = recorded(1, 16, (1.0, 1.1, 0.9))  # 32 samples per block: 32 samples/s
    two = recorded(2, 16, (1.6, 1.5, 1.7))  # 64 per block: 40 samples/s
    eff = efficiency(two, one)
    assert eff.value == pytest.approx(40 / (2 * 32))
    assert eff.ci95[0] < eff.value < eff.ci95[1]
    frame = scaling_frame([two, one])
    assert list(frame["world_size"]) == [1, 2] and list(frame["global_batch"]) == [16, 32]
    assert list(frame["samples_per_s"]) == pytest.approx([32.0, 40.0])
    assert frame["efficiency"].iloc[1] == pytest.approx(0.625)


def test_strong_scaling_splits_the_global_batch():
    from b3core.errors import B3Error
    from b3core.studies.scaling import per_rank_batch

    assert per_rank_batch(64, 4, "strong") == 16 and per_rank_batch(64, 4, "weak") == 64
    with pytest.raises(B3Error, match="every world size divides"):
        per_rank_batch(30, 4, "strong")


def test_a_spec_survives_its_own_command_line():
    from b3core.cli import build_parser
    from b3core.cli.options import fields_as_argv, spec_from_args, timing_from_args
    from b3core.spec.step import StepSpec, Timing

    images = StepSpec(
        "resnet18", 4, "bf16", 3, "inference", 64, None, 7, "sgd", 0.1, True, "none", True,
        False, "cpu", input_dtype="int64", vocab_size=9, loss="m:f",
    )  # fmt: skip
    sequences = StepSpec("gpt_small", 2, seq_len=64, device="cpu", activation_checkpointing="all")
    lean = Timing(flops=False, phases=True, peak_tflops=1.5)
    for spec, timing in ((images, Timing(3, 4, "per-step")), (sequences, lean)):
        argv = ["step", *fields_as_argv(spec), *fields_as_argv(timing)]
        args = build_parser().parse_args(argv)
        assert spec_from_args(args) == spec and timing_from_args(args) == timing


@pytest.mark.slow
def test_b3_scale_measures_each_world_size_and_writes_the_table_and_plot(tmp_path):
    out = tmp_path / "scale"
    proc = b3(
        "scale", "--model", "simple_cnn", "--batch-size", "8", "--nproc-per-node", "2",
        "--device", "cpu", "--repeats", "3", "--out", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = json.loads((out / "scaling.json").read_text())["rows"]
    assert [r["world_size"] for r in rows] == [1, 2]
    assert [r["global_batch"] for r in rows] == [8, 16]
    assert rows[0]["efficiency"] == pytest.approx(1.0)
    assert (out / "scaling.png").stat().st_size > 0 and (out / "world-2.json").is_file()


DIES_ON_THIRD_BUILD = """
import os
from torch import nn

BUILT = [0]

def net(num_classes):
    BUILT[0] += 1
    if os.environ.get("RANK") == "1" and os.environ.get("B3_TEST_DIE") and BUILT[0] == 3:
        os._exit(7)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, num_classes))
net.b3_input_shape = (3, 8, 8)
"""


@pytest.mark.slow
def test_a_rank_killed_mid_sweep_keeps_the_log_and_resume_completes_it(tmp_path):
    (tmp_path / "killer_net.py").write_text(DIES_ON_THIRD_BUILD)
    out = tmp_path / "sweep"
    argv = [
        "sweep", "--model", "killer_net:net", "--batch-sizes", "4,8", "--passes", "2",
        "--repeats", "2", "--nproc-per-node", "2", "--device", "cpu", "--out", str(out),
    ]  # fmt: skip
    os.environ["B3_TEST_DIE"] = "1"
    try:
        killed = b3(*argv, pythonpath=tmp_path)
    finally:
        del os.environ["B3_TEST_DIE"]
    assert killed.returncode == 1 and "rank 1 failed (exit 7)" in killed.stderr
    lines = (out / "sweep.jsonl").read_text().splitlines()
    units = [json.loads(line) for line in lines[1:]]  # every line whole
    assert 1 <= len(units) <= 2
    resumed = b3(*argv, "--resume", pythonpath=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    units = [json.loads(line) for line in (out / "sweep.jsonl").read_text().splitlines()[1:]]
    assert len(units) == 4 and all(u["result"]["distributed"]["world_size"] == 2 for u in units)


# --- the finder under data parallel -----------------------------------------------------------

HEAVY_ON_RANK_ONE = """
import os
import torch
from torch import nn

BALLAST = []  # rank 1 alone holds 256 MiB more while it trains (the models stay identical)

class Net(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.fc = nn.Linear(3 * 4 * 4, num_classes)

    def forward(self, x):
        if os.environ.get("RANK") == "1" and not BALLAST:
            BALLAST.append(torch.ones(64 * 2**20))
        return self.fc(x.flatten(1))

def net(num_classes):
    BALLAST.clear()
    return Net(num_classes)
net.b3_input_shape = (3, 4, 4)
"""


@pytest.mark.slow
def test_the_finder_under_ddp_needs_the_batch_to_fit_on_every_rank(tmp_path):
    (tmp_path / "lopsided.py").write_text(HEAVY_ON_RANK_ONE)
    common = ["--model", "lopsided:net", "--device", "cpu", "--nproc-per-node", "2",
              "--start", "2", "--limit", "2"]  # fmt: skip
    out = tmp_path / "roomy.json"
    roomy = b3("find-max-batch", *common, "--memory-budget", "1G", "--json", str(out),
               pythonpath=tmp_path)  # fmt: skip
    assert roomy.returncode == 0, roomy.stderr
    found = json.loads(out.read_text())
    assert found["max_batch"] == 2 and found["hit_limit"]
    assert all(p["peak_bytes"] > 256 * 2**20 for p in found["probes"])  # rank 1's peak counts
    out = tmp_path / "tight.json"
    tight = b3("find-max-batch", *common, "--memory-budget", "200M", "--json", str(out),
               pythonpath=tmp_path)  # fmt: skip
    assert tight.returncode == 1, tight.stderr  # nothing fits: exit 1, the probes still saved
    found = json.loads(out.read_text())
    assert found["max_batch"] == 0  # rank 0 fits; rank 1 does not, so nothing does
    assert all("rank 1:" in p["reason"] for p in found["probes"])


@pytest.mark.slow
def test_b3_run_shards_the_data_over_the_ranks_with_b3s_own_flags(tmp_path):
    out = tmp_path / "run.json"
    proc = b3(
        "run", "--model", "simple_cnn", "--batch-size", "16", "--train-size", "256",
        "--image-size", "32", "--num-devices", "2", "--strategy", "ddp", "--device", "cpu",
        "--json", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("b3 run: simple_cnn, batch 16, 2 ranks (gloo)") == 1
    result = json.loads(out.read_text())["result"]
    train = result["runs"][0]["train"]
    # 256 images in shards of 128: 8 steps of 16 on each rank, every sample counted once
    assert (train["samples"], train["steps"]) == (256, 8)
    assert result["step"]["distributed"]["global_batch_size"] == 32


def test_the_rank_that_left_is_named_not_the_peer_it_aborted():
    """When a rank exits, a peer inside a gloo collective may abort (exit -6) before the engine
    stops it; the failure to report is the rank that left, whichever the engine saw first."""
    from types import SimpleNamespace

    from b3core.measuring.distributed import _cause

    aborted, left = (
        SimpleNamespace(exitcode=-6, timestamp=1),
        SimpleNamespace(exitcode=75, timestamp=2),
    )
    assert _cause({0: aborted, 1: left}) == (1, left)
    first, later = (
        SimpleNamespace(exitcode=2, timestamp=1),
        SimpleNamespace(exitcode=1, timestamp=5),
    )
    assert _cause({3: later, 2: first}) == (2, first)


def test_a_cuda_device_is_resolved_with_its_index(monkeypatch):
    """torch 2.11's set_per_process_memory_fraction refuses a bare 'cuda': every CUDA path
    (the memory cap first) receives 'cuda:N'."""
    from b3core.workloads.devices import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert resolve_device("cuda") == torch.device("cuda", 1)
    assert resolve_device("auto") == torch.device("cuda", 1)
    assert resolve_device("cuda:0") == torch.device("cuda", 0)


def test_a_rank_that_leaves_is_named_even_when_the_engine_saw_its_peer_first(tmp_path):
    """The engine of function ranks records only the first failure it sees, which may be the
    peer that a leaving rank broke; the leaving rank's note names it."""
    from types import SimpleNamespace

    from b3core.measuring.distributed import LEFT_NOTES_ENV, _failure

    env = {**os.environ, "RANK": "1", LEFT_NOTES_ENV: str(tmp_path)}
    leaving = (
        "from b3core.measuring.distributed import leave; "
        "from b3core.measuring.protocol import Failure; "
        "leave(Failure('out_of_memory', 'over the budget'))"
    )
    left = subprocess.run([sys.executable, "-c", leaving], env=env, capture_output=True, text=True)
    said = {"error": "out_of_memory", "message": "over the budget"}
    assert left.returncode == 75 and json.loads(left.stderr) == said  # the protocol's line
    peer = SimpleNamespace(exitcode=-6, timestamp=1, local_rank=0)
    failed = _failure({0: peer}, tmp_path, tmp_path)
    assert (failed.rank, failed.exitcode, failed.failure.to_dict()) == (1, 75, said)
    for note in tmp_path.glob("*.json"):
        note.unlink()
    assert _failure({0: peer}, tmp_path, tmp_path).rank == 0  # no note: the engine's failure


GROUP_LEFT_BEHIND = """
import json, os
import torch
from torch import nn
from b3core.measuring.distributed import gather, process_group

def threads():
    return len(os.listdir("/proc/self/task"))

before = threads()
with process_group(torch.device("cpu")):
    model = nn.parallel.DistributedDataParallel(nn.Linear(4, 2))
    held = [model]
    held.append(held)  # a reference cycle holds the model, as hooks often do
    model(torch.randn(3, 4)).sum().backward()
    gather(before)
    del model, held
print(json.dumps({"before": before, "after": threads()}))
"""


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="counts threads in /proc")
def test_no_gloo_thread_outlives_the_process_group(tmp_path):
    """A gloo thread alive at exit may free a tensor into the finalizing interpreter, which
    aborts the rank; leaving the process group joins them all, DDP's lazy imports included."""
    (tmp_path / "group.py").write_text(GROUP_LEFT_BEHIND)
    proc = torchrun("--log-dir", str(tmp_path / "logs"), "--tee", "1", str(tmp_path / "group.py"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    counts = [json.loads(line.split(":", 1)[1]) for line in proc.stdout.splitlines() if "{" in line]
    assert len(counts) == 2 and all(c["after"] == c["before"] for c in counts), counts
