"""An example project whose models b3 benchmarks."""
