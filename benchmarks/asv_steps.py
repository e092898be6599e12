"""asv suite: training and inference steps over the cases of b3's profile (B3_PROFILE, default
quick), the very grid that the pytest suite runs. Narrow it with B3_MODELS, B3_BATCH_SIZES,
B3_PRECISIONS, B3_SEQ_LENS and B3_DEVICE, as for pytest. The classes live in
b3core.suites.asv_suite, which a user's own asv suite uses the same way."""

from b3core.suites.asv_suite import step_benchmarks

TrainStep, Inference, TrainCost = step_benchmarks()
