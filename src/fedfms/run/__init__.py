"""A run: its resumable state and its metrics log, shared by federated and centralized training."""
