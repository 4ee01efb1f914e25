"""Offline active learning on labeled data: the daemon's own round engine driven by an
oracle labeling backend over a local dataset, to compare strategies against random."""
