"""Federated learning: aggregation transforms and federated rounds."""
