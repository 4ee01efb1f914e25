"""Offline active learning on labeled data: the daemon's own round engine driven by an
oracle labeling backend over a local dataset, to compare strategies against random."""

from connector.simulation.config import SimulationConfig, count_work, parse_strategy
from connector.simulation.dataset import LabeledDataset, load_dataset
from connector.simulation.metrics import aubc, labels_to_reach, sharp_drops, summarise
from connector.simulation.run import SCHEMA, oracle_engine, run_simulation

__all__ = [
    "SCHEMA",
    "LabeledDataset",
    "SimulationConfig",
    "aubc",
    "count_work",
    "labels_to_reach",
    "load_dataset",
    "oracle_engine",
    "parse_strategy",
    "run_simulation",
    "sharp_drops",
    "summarise",
]
