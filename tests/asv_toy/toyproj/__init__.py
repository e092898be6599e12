"""A tiny project that trains with b3core; the test rewrites SLOWDOWN_S between commits."""

import time

import torch

from b3core.measuring.runner import MIN_WARMUP, StepSpec, build_step

SLOWDOWN_S = 0.0


def make_step():
    step = build_step(StepSpec("simple_cnn", 8, device="cpu"), torch.device("cpu"))

    def train_step():
        step()
        if SLOWDOWN_S:
            time.sleep(SLOWDOWN_S)

    for _ in range(MIN_WARMUP):
        train_step()
    return train_step
