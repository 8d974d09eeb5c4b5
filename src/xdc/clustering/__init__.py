"""Clustering for DeepCluster-style training: feature preprocessing, k-means, Sinkhorn assignment, cluster
statistics and the cluster-balanced sampler. Import from the submodules."""
