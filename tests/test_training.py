"""The training step's arithmetic: accumulation, precision paths, learning."""

import copy

import pytest
import torch

from b3core.workloads.models import create_model
from b3core.workloads.precision import autocast_factory, make_grad_scaler
from b3core.workloads.training import make_optimizer, train_step, windows

from .conftest import requires_cuda

pytestmark = pytest.mark.untimed  # nothing here asserts on speed


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def _step_and_grads(model, batches, optimizer_name="sgd", scaler=None):
    """Run one update; capture the gradients just before the optimizer consumes them."""
    optimizer = make_optimizer(optimizer_name, model.parameters(), lr=0.1)
    grads = {}

    def capture(opt, *_):
        grads.update({n: p.grad.detach().clone() for n, p in model.named_parameters()})

    optimizer.register_step_pre_hook(capture)
    train_step(model, optimizer, batches, scaler=scaler)
    return grads, {n: p.detach().clone() for n, p in model.named_parameters()}


def _batch(n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 32, 32, generator=g), torch.randint(10, (n,), generator=g)


@pytest.mark.parametrize("optimizer_name", ["sgd", "adam"])
@pytest.mark.parametrize("k,b", [(4, 8), (3, 5)])
def test_accumulated_micro_batches_equal_one_big_batch(optimizer_name, k, b):
    base = create_model("simple_cnn").double()
    big_x, big_y = _batch(k * b, seed=1)
    big_x = big_x.double()
    micro = [(big_x[i * b : (i + 1) * b], big_y[i * b : (i + 1) * b]) for i in range(k)]

    g_big, w_big = _step_and_grads(copy.deepcopy(base), [(big_x, big_y)], optimizer_name)
    g_acc, w_acc = _step_and_grads(copy.deepcopy(base), micro, optimizer_name)
    for name in g_big:
        assert _relative_error(g_acc[name], g_big[name]) < 1e-5, name
        assert _relative_error(w_acc[name], w_big[name]) < 1e-5, name
    # the step must have moved the weights, or the comparison above proves nothing
    assert any(_relative_error(w_big[n], p.detach()) > 1e-4 for n, p in base.named_parameters())


def test_fp32_accumulation_matches_within_1e5():
    """The issue's bar, in float32 as users run it."""
    base = create_model("simple_cnn")
    x, y = _batch(32, seed=2)
    micro = [(x[i * 8 : (i + 1) * 8], y[i * 8 : (i + 1) * 8]) for i in range(4)]
    g_big, w_big = _step_and_grads(copy.deepcopy(base), [(x, y)])
    g_acc, w_acc = _step_and_grads(copy.deepcopy(base), micro)
    for name in g_big:
        assert _relative_error(g_acc[name], g_big[name]) < 1e-5
        assert _relative_error(w_acc[name], w_big[name]) < 1e-5


def test_uneven_last_window_equals_its_own_big_batch():
    """10 micro-batches with k=4 make windows of 4, 4 and 2; the last is a batch of 2b."""
    b, k = 6, 4
    data = [_batch(b, seed=s) for s in range(10)]
    groups = list(windows(data, k))
    assert [len(g) for g in groups] == [4, 4, 2]

    base = create_model("simple_cnn").double()
    last = [(x.double(), y) for x, y in groups[-1]]
    concat = (torch.cat([x for x, _ in last]), torch.cat([y for _, y in last]))
    g_big, w_big = _step_and_grads(copy.deepcopy(base), [concat])
    g_acc, w_acc = _step_and_grads(copy.deepcopy(base), last)
    for name in g_big:
        assert _relative_error(g_acc[name], g_big[name]) < 1e-5
        assert _relative_error(w_acc[name], w_big[name]) < 1e-5


def test_micro_batches_of_different_sizes_weight_by_samples():
    """Averaging per-micro-batch means would be wrong here (the 2024 transformers bug)."""
    base = create_model("simple_cnn").double()
    x, y = _batch(11, seed=3)
    x = x.double()
    micro = [(x[:8], y[:8]), (x[8:], y[8:])]
    g_big, _ = _step_and_grads(copy.deepcopy(base), [(x, y)])
    g_acc, _ = _step_and_grads(copy.deepcopy(base), micro)
    for name in g_big:
        assert _relative_error(g_acc[name], g_big[name]) < 1e-5


def test_grad_scaler_path_unscales_before_the_step():
    """With a GradScaler (fp32 here, so it runs on CPU) the update equals the unscaled one."""
    base = create_model("simple_cnn")
    x, y = _batch(16, seed=4)
    micro = [(x[:8], y[:8]), (x[8:], y[8:])]
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    g_plain, w_plain = _step_and_grads(copy.deepcopy(base), micro)
    g_scaled, w_scaled = _step_and_grads(copy.deepcopy(base), micro, scaler=scaler)
    for name in g_plain:
        assert _relative_error(g_scaled[name], g_plain[name]) < 1e-5
        assert _relative_error(w_scaled[name], w_plain[name]) < 1e-5


def test_no_sync_wraps_every_micro_batch_but_the_last():
    model = create_model("simple_cnn")
    opt = make_optimizer("sgd", model.parameters(), 0.1)
    entered = []

    class Recorder:
        def __enter__(self):
            entered.append(True)

        def __exit__(self, *exc):
            return False

    train_step(model, opt, [_batch(4, s) for s in range(3)], no_sync=Recorder)
    assert len(entered) == 2


def test_loss_falls_on_a_fixed_batch():
    model = create_model("simple_cnn")
    opt = make_optimizer("adam", model.parameters(), lr=1e-3)
    batch = _batch(32, seed=5)
    losses = [float(train_step(model, opt, [batch])) for _ in range(40)]
    assert losses[-1] < 0.5 * losses[0]


def test_gradients_are_set_to_none_after_the_step():
    model = create_model("simple_cnn")
    opt = make_optimizer("adam", model.parameters(), lr=1e-3)
    train_step(model, opt, [_batch(4, 0)])
    assert all(p.grad is None for p in model.parameters())


def test_bf16_autocast_gives_finite_falling_loss_on_cpu():
    device = torch.device("cpu")
    model = create_model("simple_cnn")
    opt = make_optimizer("adam", model.parameters(), lr=1e-3)
    autocast = autocast_factory("bf16", device)
    assert make_grad_scaler("bf16", device) is None
    batch = _batch(16, seed=6)
    losses = [float(train_step(model, opt, [batch], autocast=autocast)) for _ in range(15)]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]


@requires_cuda
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_mixed_precision_on_cuda_gives_finite_loss(precision):
    device = torch.device("cuda")
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    model = create_model("simple_cnn").to(device)
    opt = make_optimizer("adam", model.parameters(), lr=1e-3)
    scaler = make_grad_scaler(precision, device)
    assert (scaler is not None) == (precision == "fp16")
    x, y = _batch(32, seed=7)
    batch = (x.to(device), y.to(device))
    autocast = autocast_factory(precision, device)
    losses = [
        float(train_step(model, opt, [batch, batch], autocast=autocast, scaler=scaler))
        for _ in range(10)
    ]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]


def test_the_timed_inference_step_runs_in_eval_mode_under_inference_mode():
    """What b3 times for --inference: no autograd state is kept, and BatchNorm/dropout run as
    at evaluation."""
    from b3core.measuring.runner import prepare
    from b3core.spec import StepSpec

    ready = prepare(StepSpec("small_bn_cnn", 4, mode="inference", device="cpu"))
    model = ready.workload.trainer.model
    seen = []
    model.register_forward_hook(
        lambda module, args, out: seen.append((torch.is_inference_mode_enabled(), module.training))
    )
    out = ready.call()
    assert seen == [(True, False)]
    assert not out.requires_grad
