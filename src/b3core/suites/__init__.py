"""The benchmark suites' shared definitions: cases, the pytest plugin and asv glue."""
