"""asv benchmarks of this project's models: b3's classes over our own cases. Keep the three
names: asv finds a benchmark by its class's name."""

from b3core.suites.asv_suite import step_benchmarks

TrainStep, Inference, TrainCost = step_benchmarks(
    models="my_project.nets:tiny_cnn,my_project.nets:tiny_mlp",
    batch_sizes="8,16",
    precisions="fp32",
)
