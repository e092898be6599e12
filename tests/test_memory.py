import pytest
import torch

from b3core.errors import B3Error, MemoryBudgetExceeded, StepOutOfMemory
from b3core.measuring.memory import MemoryBudget, PeakMemoryTracker, parse_memory_size
from b3core.measuring.protocol import is_out_of_memory
from b3core.measuring.result import PeakMemory
from b3core.measuring.runner import measure
from b3core.spec import StepSpec, Timing

pytestmark = pytest.mark.untimed  # nothing here asserts on speed


@pytest.mark.parametrize(
    "text,expected",
    [
        ("512M", 512 * 2**20),
        ("1.5G", int(1.5 * 2**30)),
        ("2GiB", 2 * 2**30),
        ("1000", 1000),
        ("64kb", 64 * 1024),
    ],
)
def test_parse_memory_size(text, expected):
    assert parse_memory_size(text) == expected


@pytest.mark.parametrize("text", ["lots", "-1G", "0", "1.2.3G", ""])
def test_unparseable_memory_size_is_a_clear_error(text):
    with pytest.raises(B3Error):
        parse_memory_size(text)


def test_cpu_tracker_sees_a_large_allocation():
    with PeakMemoryTracker(torch.device("cpu")) as before:
        pass
    baseline = before.result().peak_bytes
    with PeakMemoryTracker(torch.device("cpu")) as tracker:
        block = torch.ones(64 * 2**20, dtype=torch.float32)  # 256 MiB, touched
        del block
    assert tracker.result().peak_bytes - baseline > 200 * 2**20


def test_oom_recognition():
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory"))
    assert is_out_of_memory(MemoryBudgetExceeded("over"))
    assert is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory"))
    assert is_out_of_memory(
        RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`")
    )
    assert is_out_of_memory(RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    assert not is_out_of_memory(RuntimeError("cuDNN error: CUDNN_STATUS_BAD_PARAM"))


def test_budget_guard_raises_b3s_oom_on_cpu():
    budget = MemoryBudget(torch.device("cpu"), 100 * 2**20)
    budget.check(PeakMemory(50 * 2**20, None, "process_peak_rss"))
    with pytest.raises(MemoryBudgetExceeded):
        budget.check(PeakMemory(150 * 2**20, None, "process_peak_rss"))


def test_measure_turns_a_budget_overrun_into_step_out_of_memory():
    spec = StepSpec("simple_cnn", 8, device="cpu")
    with pytest.raises(StepOutOfMemory, match="simple_cnn/train/bs8"):
        measure(spec, Timing(repeats=2), memory_budget=1 * 2**20)
    # the failed configuration left nothing behind that stops the next one
    assert measure(spec, Timing(repeats=2)).measurement.time.n == 2
