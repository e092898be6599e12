"""Workloads: models, data, the training and inference steps, precision and devices."""
