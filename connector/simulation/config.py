"""What to simulate: the strategies (``name:key=value`` texts), seeds, budget and model,
validated as the daemon validates its round plan."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from connector.contracts.errors import ConfigError
from connector.learning.model import ModelSpec
from connector.learning.selfsup import PretrainConfig
from connector.learning.semi import SemiConfig
from connector.learning.training import TrainConfig
from connector.rounds.plan import check_cold_start, check_coupled, check_strategy, mc_samples_for


def parse_strategy(text: str) -> tuple[str, dict[str, Any]]:
    """``"power:base=bald:beta=2"`` -> ``("power", {"base": "bald", "beta": 2})``.

    Parameters follow the name, each after a colon (commas separate strategies).
    """
    name, _, rest = text.partition(":")
    params: dict[str, Any] = {}
    for part in filter(None, rest.split(":")):
        key, sep, raw = part.partition("=")
        if not sep:
            raise ConfigError(f"strategy {text!r}: parameter {part!r} must be key=value")
        value: Any = raw
        for cast in (int, float):
            try:
                value = cast(raw)
                break
            except ValueError:
                continue
        params[key.strip()] = value
    return name.strip(), params


@dataclass(frozen=True)
class SimulationConfig:
    """What to simulate. ``mc_samples=None``: the daemon's rule (``rounds.plan``)."""

    strategies: tuple[str, ...] = ("random", "entropy", "margin")
    seeds: tuple[int, ...] = (0, 1, 2)
    initial: int = 20
    cold_start: str = "random"
    batch: int = 10
    budget: int = 200
    test_fraction: float = 0.2
    spec: ModelSpec = field(default_factory=ModelSpec)
    train: TrainConfig = field(default_factory=TrainConfig)
    #: Training on the unlabeled pool (``--semi-supervised``); off by default.
    semi: SemiConfig = field(default_factory=SemiConfig)
    #: Self-supervised pre-training on the pool (``--pretrain``); off by default.
    pretraining: PretrainConfig = field(default_factory=PretrainConfig)
    mc_samples: int | None = None
    max_candidates: int | None = None
    full_data: bool = True
    workers: int = 1

    def __post_init__(self) -> None:
        if not self.strategies:
            raise ConfigError("give at least one strategy")
        for text in self.strategies:
            name, params = parse_strategy(text)
            strategy = check_strategy(name, params, setting="--strategies")
            check_coupled(strategy, self.spec.ensemble_size, setting="--strategies")
        check_cold_start(self.cold_start)
        if self.initial < 2 or self.batch < 1 or self.budget < self.initial:
            raise ConfigError(
                f"need initial >= 2, batch >= 1 and budget >= initial; got initial="
                f"{self.initial}, batch={self.batch}, budget={self.budget}"
            )
        if not 0.0 < self.test_fraction < 1.0:
            raise ConfigError(f"test_fraction must be in (0, 1), got {self.test_fraction}")

    def validation_size(self, n_items: int) -> int:
        """Items in the random validation split (the test set) of an ``n_items`` dataset."""
        return max(1, round(n_items * self.test_fraction))

    def mc_for(self, strategy: str) -> int:
        name, params = parse_strategy(strategy)
        return mc_samples_for(name, params, self.mc_samples)


def count_work(cfg: SimulationConfig, n_pool: int) -> tuple[int, int]:
    """(all-labels trainings, trained rounds) the simulation will run."""
    budget = min(cfg.budget, n_pool)
    rounds = 1 + (-(-(budget - cfg.initial) // cfg.batch) if budget > cfg.initial else 0)
    per_seed = 1 if cfg.full_data else 0
    return per_seed * len(cfg.seeds), rounds * len(cfg.seeds) * len(cfg.strategies)
