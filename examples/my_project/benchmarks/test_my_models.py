"""pytest-benchmark cases for this project's models, timed by b3's runner through `b3_bench`:
`pytest benchmarks/ --benchmark-only`."""

import pytest

from b3core import StepSpec


@pytest.mark.parametrize("batch_size", [8, 16])
def test_tiny_cnn_train_step(b3_bench, batch_size):
    b3_bench(StepSpec(model="my_project.nets:tiny_cnn", batch_size=batch_size))


def test_tiny_text_train_step_with_our_own_step(b3_bench):
    b3_bench(
        StepSpec(
            model="my_project.nets:tiny_text",
            batch_size=32,
            train_step="my_project.training:train_step",
        )
    )
