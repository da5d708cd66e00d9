"""Experiments built on the trainers: centralized training, the demo, reports."""
