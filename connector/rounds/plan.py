"""The round plan: what a round runs, resolved from settings plus admin overrides into
one validated value.

Strategy, its parameters, batch size, cold start, MC samples and the candidate bound are
resolved together and checked against the strategy registry: an unknown name or
parameter is a ``ConfigError`` that names the fix ("did you mean 'entropy'?"). ``check``
and ``run`` resolve the plan at start-up, before anything is written; the engine
re-resolves it at every phase until the round's selection is frozen, so a round that
failed before freezing runs with corrected settings after a restart.

The one MC rule: ``model.mc_samples`` when set; otherwise 20 dropout passes for
strategies that read the disagreement between passes (BALD and kin), 1 for the others.
The one cold-start rule: a round without a trained model (the first, or one where fewer
than two classes are labeled) selects with the cold-start strategy: ``random``, or a
strategy that works on embeddings of the initial (pretrained or random-init) model.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from connector.contracts.errors import ConfigError
from connector.settings import Settings
from strategies import Strategy, available, get_strategy, parameters, trains

#: Strategies that read the disagreement between K samples: MC dropout is on for them.
DISAGREEMENT = frozenset(
    {"bald", "batchbald", "variation_ratios", "mean_std", "vote_entropy", "kl_to_consensus"}
)
#: MC-dropout passes for disagreement strategies when ``model.mc_samples`` is unset.
DEFAULT_DISAGREEMENT_SAMPLES = 20


@dataclass(frozen=True)
class Overrides:
    """Admin overrides of the settings (journaled in the state db)."""

    strategy: str | None = None
    params: Mapping[str, Any] | None = None
    batch_size: int | None = None


@dataclass(frozen=True)
class RoundPlan:
    strategy: str
    params: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 20
    cold_start: str = "random"
    mc_samples: int = 1
    max_candidates: int | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RoundPlan:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})

    def build(self) -> Strategy:
        """The strategy object (the plan was validated, so this does not fail)."""
        return get_strategy(self.strategy, **self.params)

    def build_cold_start(self) -> Strategy:
        return get_strategy(self.cold_start)

    def strategy_for(self, trained: bool) -> Strategy:
        """The plan's strategy when a trained model reads the pool, else the cold start."""
        return self.build() if trained else self.build_cold_start()

    def describe(self) -> str:
        params = "".join(f" {k}={v}" for k, v in sorted(self.params.items()))
        bound = "" if self.max_candidates is None else f", candidates <= {self.max_candidates}"
        return (
            f"strategy {self.strategy}{params}, batch {self.batch_size}, cold start "
            f"{self.cold_start}, MC samples {self.mc_samples}{bound}"
        )


def _did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else "."


def check_strategy(name: str, params: Mapping[str, Any], *, setting: str) -> Strategy:
    """Build strategy ``name`` with ``params``; a ConfigError naming the fix otherwise.

    ``setting`` names where the value came from (``strategy.name``, ``round set``).
    """
    known = available()
    if name not in known:
        raise ConfigError(
            f"unknown strategy {name!r}{_did_you_mean(name, known)} Set {setting} to one of: "
            f"{', '.join(known)} (docs/strategies.md)"
        )
    accepted = parameters(name)
    for key in params:
        if key not in accepted:
            listed = ", ".join(f"{p}={v!r}" for p, v in accepted.items()) or "none"
            raise ConfigError(
                f"strategy {name!r} has no parameter {key!r}"
                f"{_did_you_mean(key, list(accepted))} Its parameters (with defaults): "
                f"{listed}; fix {setting}'s parameters"
            )
    try:
        return get_strategy(name, **params)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"strategy {name!r}: {exc}; fix {setting}'s parameters") from None


#: Coupled methods trained with the classifier's own steps: one model, not an ensemble.
_ONE_MODEL = frozenset({"loss_prediction", "waal"})


def check_coupled(strategy: Strategy, ensemble_size: int, *, setting: str) -> None:
    """A ConfigError when the model settings cannot train what ``strategy`` needs.

    Loss prediction and WAAL train their head or critic with the classifier's steps: a
    deep ensemble would need one per member, and their scores would disagree.
    """
    need = trains(strategy)
    if need in _ONE_MODEL and ensemble_size > 1:
        raise ConfigError(
            f"strategy {strategy.name!r} trains its {need.replace('_', ' ')} network with the "
            f"classifier and needs one model, but model.ensemble_size is {ensemble_size}; "
            f"set model.ensemble_size = 1 or choose another strategy for {setting}"
        )


def check_learner(strategy: Strategy, learner: object, *, setting: str) -> None:
    """A ConfigError when ``learner`` cannot train what ``strategy`` needs
    (``contracts.learner.CoupledLearner``)."""
    need = trains(strategy)
    if need is None:
        return
    can: frozenset[str] = getattr(learner, "coupled_training", frozenset())
    if need not in can:
        raise ConfigError(
            f"strategy {strategy.name!r} needs the model trained with it ({need}), and the "
            f"learner {type(learner).__name__} cannot train that; use the torch learner "
            f"(the default) or set {setting} to a strategy that reads only probabilities "
            "or embeddings"
        )


def mc_samples_for(name: str, params: Mapping[str, Any], configured: int | None) -> int:
    """The one MC rule (module docstring). A parameter naming a strategy counts too, e.g.
    ``stochastic`` over ``bald``."""
    if configured is not None:
        return configured
    uses = {name, *(v for v in params.values() if isinstance(v, str))}
    return DEFAULT_DISAGREEMENT_SAMPLES if uses & DISAGREEMENT else 1


def check_cold_start(name: str) -> Strategy:
    strategy = check_strategy(name, {}, setting="strategy.cold_start")
    if name != "random" and not strategy.needs_embeddings:
        raise ConfigError(
            f"cold start {name!r} needs a trained model, and the first round has none; set "
            "strategy.cold_start to random or to a strategy that works on embeddings "
            "(typiclust, kmeans, coreset)"
        )
    return strategy


def resolve_plan(settings: Settings, overrides: Overrides | None = None) -> RoundPlan:
    """Settings plus admin overrides, validated, as one ``RoundPlan``.

    Raises ``ConfigError`` naming the fix for an unknown strategy, parameter or cold start.
    """
    s = settings.strategy
    o = overrides or Overrides()
    name = o.strategy or s.name
    # Parameters given for the configured strategy add to its settings' parameters
    # (`round set --param beta=2` keeps the others); another strategy brings its own.
    params = dict(s.params) if o.strategy in (None, s.name) else {}
    params.update(o.params or {})
    setting = "the strategy override (al-connector round set)" if o.strategy else "strategy.name"
    strategy = check_strategy(name, params, setting=setting)
    check_coupled(strategy, settings.model.ensemble_size, setting=setting)
    check_cold_start(s.cold_start)
    batch = o.batch_size if o.batch_size is not None else s.batch_size
    if batch < 1:
        raise ConfigError(f"batch size must be >= 1, got {batch}; fix strategy.batch_size")
    return RoundPlan(
        strategy=name,
        params=params,
        batch_size=int(batch),
        cold_start=s.cold_start,
        mc_samples=mc_samples_for(name, params, settings.model.mc_samples),
        max_candidates=s.max_candidates,
    )
