"""b3core: the library behind b3, the Basic Batchsize Benchmark."""

__version__ = "0.1.0"
