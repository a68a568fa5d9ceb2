"""Tracking: run status, metrics files, TensorBoard, figures and logs."""
