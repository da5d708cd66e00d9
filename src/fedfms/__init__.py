"""fedfms: federated fine-tuning of Segment Anything (SAM) on multi-center medical images."""

__version__ = "0.1.0"
