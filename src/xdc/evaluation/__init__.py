"""Evaluation of learned features: linear probes, k-fold protocols, top-k and cluster metrics."""
