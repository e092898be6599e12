"""Sequence models: token-id batches with next-token targets, tokens/s beside sequences/s, the
memory surface M(B, L) = a + b·B·L + c·B·L², and each bad input one line with exit 2."""

import json
import math

import pytest
import torch
from torch import nn

from b3core.measuring.runner import measure
from b3core.reports.tables import rate_text, step_rows
from b3core.spec.step import StepSpec, Timing
from b3core.studies.memory_surface import fit_memory_surface
from b3core.workloads.build import build_workload, resolve
from b3core.workloads.data import SyntheticSamples, synthetic_batch
from tests.cli_helpers import b3_here

pytestmark = pytest.mark.untimed  # nothing here asserts on speed

CPU = torch.device("cpu")
LM = "gpt_small"
QUICK = Timing(repeats=2, warmup=2, block_steps=1, telemetry=False)


def test_the_language_model_learns_the_next_token_and_starts_at_chance():
    step = resolve(StepSpec(model=LM, batch_size=4, seq_len=16, vocab_size=512, device="cpu"))
    workload = build_workload(step)
    inputs, targets = synthetic_batch(4, step.model_input, CPU)  # the batch the step trains on
    assert inputs.shape == targets.shape == (4, 16) and inputs.dtype == torch.int64
    # the targets are the inputs shifted by one: position t predicts token t + 1
    assert torch.equal(inputs[:, 1:], targets[:, :-1])
    model = workload.trainer.model
    with torch.no_grad():
        logits = model(inputs)
        loss = workload.trainer.loss_fn(logits, targets)
    assert logits.shape == (4, 16, 512)
    assert workload.info.num_classes == 512  # what it records: its classes are the tokens
    # random weights and uniform random tokens: the loss of guessing, ln V, to a few percent
    assert loss.item() == pytest.approx(math.log(512), rel=0.05)
    assert float(workload.call()) == pytest.approx(math.log(512), rel=0.05)


def test_the_encoder_classifier_takes_token_ids_and_predicts_a_class_per_sequence():
    step = resolve(StepSpec(model="bert_small", batch_size=3, seq_len=8, num_classes=5))
    workload = build_workload(step)
    inputs, targets = synthetic_batch(3, step.model_input, CPU)
    assert inputs.shape == (3, 8) and targets.shape == (3,) and int(targets.max()) < 5
    assert workload.trainer.model(inputs).shape == (3, 5)


def test_synthetic_samples_of_a_language_model_are_shifted_sequences():
    model_input = resolve(StepSpec(model=LM, batch_size=1, seq_len=12)).model_input
    inputs, targets = SyntheticSamples(3, model_input)[1]
    assert inputs.shape == targets.shape == (12,)
    assert torch.equal(inputs[1:], targets[:-1])


def test_tokens_per_second_is_the_length_times_sequences_per_second(tmp_path):
    result = measure(StepSpec(model=LM, batch_size=2, seq_len=24, device="cpu"), QUICK)
    samples_per_s = result.measurement.throughput.samples_per_s
    assert result.tokens_per_s == 24 * samples_per_s
    out = tmp_path / "step.json"
    done = b3_here(
        "step", "--model", LM, "--seq-len", "24", "--batch-size", "2", "--repeats", "2",
        "--block-steps", "1", "--no-telemetry", "--json", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "tokens/s" in done.stdout
    saved = json.loads(out.read_text())["result"]
    assert saved["tokens_per_s"] == 24 * saved["throughput"]["samples_per_s"]
    # an image model has no tokens; a table of both gives tokens/s to the sequence model only
    image = measure(StepSpec(model="simple_cnn", batch_size=2), QUICK)
    assert image.tokens_per_s is None
    table = step_rows([result, image]).set_index("model")["tokens/s (95% CI)"]
    assert table[LM].startswith(rate_text(result.tokens_per_s)) and table["simple_cnn"] == ""


def test_b3_models_describes_the_causal_language_model():
    done = b3_here("models")
    line = next(line for line in done.stdout.splitlines() if LM in line)
    assert "causal language model" in line


class TooSmallEmbedding(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(100, 8)
        self.head = nn.Linear(8, 10)

    def forward(self, ids):
        return self.head(self.embed(ids).mean(1))


def too_small_embedding():
    return TooSmallEmbedding()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "simple_cnn", "--seq-len", "64"], "not token sequences"),
        (["--model", LM, "--seq-len", "4096"], "longer than model gpt_small's context of 1024"),
        (["--model", LM, "--seq-len", "64", "--image-size", "32"], "only one of"),
        (["--model", LM, "--seq-len", "0"], "--seq-len"),
        (["--model", LM, "--num-classes", "5"], "give --vocab-size, not --num-classes"),
        (
            [
                "--model", f"{__name__}:too_small_embedding", "--input-dtype", "int64",
                "--seq-len", "16", "--vocab-size", "1000",
            ],
            "vocabulary mismatch",
        ),
    ],
)  # fmt: skip
def test_bad_sequence_input_is_one_line_and_exit_2(args, message):
    done = b3_here("step", *args, "--batch-size", "2", "--repeats", "1")
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_converge_which_trains_on_images_refuses_a_sequence_model_in_one_line():
    done = b3_here("converge", "--model", LM, "--batch-sizes", "4", "--target-accuracy", "0.5")
    assert done.returncode == 2 and "trains image classifiers" in done.stderr
    assert "Traceback" not in done.stderr


# --- the memory surface, fitted to planted peaks ---------------------------------------------

GRID = [(b, length) for length in (64, 128, 256) for b in (2, 4, 8)]


def planted(a, b, c, noise=0.0, seed=1):
    """Peaks on the surface, each off by a relative error of SD `noise` (seed 0's errors fall
    outside the 95% intervals, as one draw in twenty may: seed 1's are typical)."""
    rng = torch.Generator().manual_seed(seed)
    peaks = []
    for batch, length in GRID:
        exact = a + b * batch * length + c * batch * length**2
        peaks.append(round(exact * (1 + noise * float(torch.randn((), generator=rng)))))
    return peaks


def test_the_surface_recovers_planted_terms_and_predicts_an_unprobed_point():
    a, b, c = 50e6, 20e3, 40.0
    surface = fit_memory_surface(GRID, planted(a, b, c, noise=0.002))
    for term, truth in zip(surface.terms, (a, b, c)):
        assert term.low <= truth <= term.high
    assert not surface.attention_vanishes
    exact = a + b * 6 * 192 + c * 6 * 192**2
    assert surface.predict(6, 192) == pytest.approx(exact, rel=0.01)
    budget = 400e6
    edge = surface.max_batch_for(budget, 192)
    assert surface.predict(edge, 192) <= budget < surface.predict(edge + 1, 192)
    assert max(abs(r) for r in surface.residual_shares()) < 0.01


def test_a_fused_attention_without_the_l2_term_is_said_to_vanish():
    surface = fit_memory_surface(GRID, planted(50e6, 20e3, 0.0, noise=0.002))
    assert surface.attention_vanishes
    assert surface.terms[2].low < 0 < surface.terms[2].high


def test_probes_that_peak_in_the_optimizers_update_are_said_to_miss_the_surface():
    """At small batches the peak is Adam's update, flat in B·L: those probes sit above the
    surface, and b3 says the fit misses them."""
    clean = fit_memory_surface(GRID, planted(50e6, 20e3, 40.0))
    assert not clean.misses_a_probe
    flat = [max(peak, 60e6) for peak in planted(50e6, 20e3, 40.0)]
    bent = fit_memory_surface(GRID, flat)
    assert bent.misses_a_probe and bent.max_residual_share > 0.05


def test_the_surface_needs_two_lengths_and_four_probes():
    with pytest.raises(ValueError, match="two sequence lengths"):
        fit_memory_surface([(1, 64), (2, 64), (4, 64), (8, 64)], [1, 2, 3, 4])
    with pytest.raises(ValueError, match="4 probes"):
        fit_memory_surface(GRID[:3], [1, 2, 3])


def test_b3_memory_over_lengths_prints_the_surface_with_its_b_l2_term(tmp_path):
    out = tmp_path / "surface.json"
    done = b3_here(
        "memory", "--model", LM, "--vocab-size", "256", "--seq-lens", "8,16",
        "--batch-sizes", "1,2", "--memory-budget", "64M", "--json", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "B·L²" in done.stdout and "residuals" in done.stdout
    assert "predicted largest batch within 64 MiB at length 16" in done.stdout
    saved = json.loads(out.read_text())
    assert saved["format"] == "b3/memory-surface/1"
    assert [t["form"] for t in saved["surface"]["terms"]] == ["a", "b·B·L", "c·B·L²"]
    assert len(saved["surface"]["points"]) == 4
    said = "the surface misses a probe" in done.stdout
    assert said == saved["surface"]["misses_a_probe"]


def test_find_max_batch_finds_the_exact_edge_in_sequences_and_tokens_at_each_length(tmp_path):
    out = tmp_path / "edge.json"
    done = b3_here(
        "find-max-batch", "--model", LM, "--vocab-size", "256", "--seq-lens", "8,16",
        "--memory-budget", "24M", "--json", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    curve = json.loads(out.read_text())["curve"]
    assert [edge["seq_len"] for edge in curve] == [8, 16]
    for edge in curve:
        assert edge["max_tokens"] == edge["max_batch"] * edge["seq_len"] > 0
        fits = {p["batch_size"] for p in edge["probes"] if p["fits"]}
        misses = {p["batch_size"] for p in edge["probes"] if not p["fits"]}
        assert edge["max_batch"] in fits and edge["max_batch"] + 1 in misses  # one more does not
    assert curve[0]["max_batch"] > curve[1]["max_batch"]
    assert "the edge over sequence length" in done.stdout


# --- the benchmark suites' length axis ---------------------------------------------------------


def test_the_suites_time_a_sequence_model_at_each_length_and_an_image_model_once():
    from b3core.suites.asv_suite import step_benchmarks
    from b3core.suites.cases import CaseOptions, benchmark_cases, get_profile

    narrow = dict(device="cpu", batch_sizes="2", precisions="fp32", accumulation_steps="1")
    options = CaseOptions(models=f"{LM},simple_cnn", seq_lens="64,128", **narrow)
    cases = benchmark_cases(options, mode="train")
    assert [(c.model, c.seq_len) for c in cases] == [(LM, 64), (LM, 128), ("simple_cnn", None)]
    train_step, *_ = step_benchmarks(models=f"{LM},simple_cnn", seq_lens="64,128", **narrow)
    assert train_step.params[0] == [f"{LM}/seq64", f"{LM}/seq128", "simple_cnn"]
    assert train_step.grid.case_on_axis(f"{LM}/seq128", 2, "fp32", "train") == cases[1]
    # the full profile is the profile case: its language models at three lengths each
    full = benchmark_cases(CaseOptions(profile="full", models=LM, **narrow), mode="train")
    assert [c.seq_len for c in full] == list(get_profile("full").seq_lens) == [128, 256, 512]


# --- hf/TYPE: transformers' models from their configurations -----------------------------------


def test_hf_gpt2_is_built_from_its_configuration_with_random_weights():
    pytest.importorskip("transformers")
    spec = StepSpec(model="hf/gpt2", batch_size=2, seq_len=16, vocab_size=1000, mode="inference")
    step = resolve(spec)
    assert step.model.task == "causal-lm" and step.model.context_size == 1024
    workload = build_workload(step)
    assert workload.info.origin == "transformers" and workload.info.tokens_per_sample == 16
    assert workload.call().shape == (2, 16, 1000)  # token ids in, next-token logits out
    assert resolve(StepSpec(model="hf/bert", batch_size=2)).model.task == "classification"


def test_an_hf_name_that_would_need_the_network_is_one_line():
    pytest.importorskip("transformers")
    done = b3_here("step", "--model", "hf/bert-base-uncased", "--batch-size", "2")
    assert done.returncode == 2 and "network" in done.stderr and "Traceback" not in done.stderr


# --- b3 sweep --seq-lens: (batch, length) units interleaved, tokens/s over length -------------


@pytest.fixture(scope="module")
def length_sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("length-sweep")
    proc = b3_here(
        "sweep", "--model", LM, "--vocab-size", "64", "--seq-lens", "8,16", "--batch-sizes",
        "2,3", "--passes", "2", "--repeats", "2", "--device", "cpu", "--no-telemetry",
        "--out", str(out),
    )  # fmt: skip
    return proc, out


def test_a_sweep_over_lengths_interleaves_every_batch_and_length_in_each_pass(length_sweep):
    from b3core.studies.sweep import aggregate_by_length, read_log

    proc, out = length_sweep
    assert proc.returncode == 0, proc.stderr
    header, records = read_log(out / "sweep.jsonl")
    assert header["plan"]["seq_lens"] == [8, 16]
    for p in range(2):
        units = {(b, length) for (_, b, pass_, length) in records if pass_ == p}
        assert units == {(2, 8), (3, 8), (2, 16), (3, 16)}
    by_length = aggregate_by_length(records.values())
    assert set(by_length) == {8, 16}
    for length, sweep in by_length.items():
        for r in sweep.for_mode("train"):
            assert r.spec.seq_len == length and r.workload.tokens_per_sample == length
            assert r.tokens_per_s == pytest.approx(length * r.measurement.throughput.samples_per_s)


def test_a_sweep_over_lengths_names_the_fastest_tokens_per_second_with_its_lead(length_sweep):
    from b3core.reports.sweep_report import fastest_tokens
    from b3core.studies.sweep import aggregate_by_length, read_log

    proc, out = length_sweep
    by_length = aggregate_by_length(read_log(out / "sweep.jsonl")[1].values())
    fastest = fastest_tokens(by_length)
    every = [r for sweep in by_length.values() for r in sweep.for_mode("train")]
    assert fastest["tokens_per_s"] == max(r.tokens_per_s for r in every)
    assert fastest["lead"]["passes"] == 2 and fastest["lead"]["ratio"] >= 1
    assert "Fastest tokens/s: batch" in proc.stdout
    assert "Length 8:" in proc.stdout and "Length 16:" in proc.stdout
    assert "seq_len" in (out / "sweep.csv").read_text().splitlines()[0]
    saved = json.loads((out / "sweep.json").read_text())
    assert set(saved["lengths"]) == {"8", "16"} and saved["fastest_tokens"] == fastest
    for name in ("sweep-lengths.png", "sweep-seq8.png", "sweep-seq16.png", "sweep.csv"):
        assert (out / name).stat().st_size > 0
    advised = b3_here("advise", "--sweep", str(out))
    assert advised.returncode == 2 and "several sequence lengths" in advised.stderr
    assert len(advised.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", LM, "--seq-lens", "8", "--seq-len", "8"], "not both"),
        (["--model", "simple_cnn", "--seq-lens", "8,16"], "not token sequences"),
        (["--model", LM, "--seq-lens", "8,4096"], "context of 1024"),
    ],
)
def test_a_sweep_over_lengths_refuses_bad_input_in_one_line(args, message, tmp_path):
    proc = b3_here("sweep", *args, "--batch-sizes", "2", "--device", "cpu", "--out", str(tmp_path))
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
