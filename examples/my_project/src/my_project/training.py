"""The project's own loss and training step, for `b3 step --loss` and `--train-step`."""

from torch import nn


def smoothed_cross_entropy(outputs, targets):
    """A loss, called as loss(outputs, targets)."""
    return nn.functional.cross_entropy(outputs, targets, label_smoothing=0.1)


def train_step(model, micro_batches, optimizer, scaler, autocast):
    """A training step as this project's loop writes it. b3 passes the arguments it names
    (see STEP_ARGUMENTS in b3core.workloads.user_step); b3 owns the warm-up, the clock, the
    batch on the device and memory tracking, and this step owns everything inside it."""
    optimizer.zero_grad(set_to_none=True)
    for inputs, targets in micro_batches:
        with autocast():
            loss = smoothed_cross_entropy(model(inputs), targets) / len(micro_batches)
        (scaler.scale(loss) if scaler is not None else loss).backward()
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    return loss
