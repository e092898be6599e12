"""The spec: what a step is, torch-free."""
