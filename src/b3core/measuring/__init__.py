"""Measuring: clocks, statistics, memory, the runner, isolation and the machine record."""
