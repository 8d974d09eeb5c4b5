"""Pretraining: the cluster-then-train rounds, checkpoints, distributed helpers and run logs."""
