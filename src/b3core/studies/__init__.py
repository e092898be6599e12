"""Studies built on the runner: sweeps, the finder, the memory model, alignment, advice, B3's experiment."""
