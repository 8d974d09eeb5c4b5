"""The data layer: index a collection, decode aligned clips, log-mel, transforms, datasets, synthetic media."""
