"""Studies built on the runner: sweeps, the finder, the memory model, alignment, advice, and
B3's experiment."""
