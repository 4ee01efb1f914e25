"""Training-coupled strategies: loss prediction, VAAL and WAAL.

Each of these methods trains something beside (or with) the classifier: a loss-prediction
head, a VAE and a discriminator, a Wasserstein critic. That training lives where training
lives (``connector.learning.coupled``); what is left here is the selection, a small pure
function of what the trained model outputs for every pool item, read from
``PoolOutputs.aux[name]`` (float ``[N]``, finite, validated by ``PoolOutputs``).

Each strategy names what it needs trained in ``trains`` (also the key of its aux array),
so the round's TRAIN phase can ask the learner for it and the plan can refuse, at start-up,
a learner or a configuration that cannot provide it. Selection is the top k of the score,
ties to the lower index; none of the three papers builds its batch jointly.
"""

from __future__ import annotations

import numpy as np

from strategies._common import (
    check_scores,
    row_chunks,
    select_top,
)
from strategies.base import PoolOutputs, Selection
from strategies.uncertainty import mean_probs

#: What each training-coupled strategy needs trained, in words, for error messages.
NEEDS = {
    "loss_prediction": "its loss-prediction head",
    "vaal": "its VAE and discriminator",
    "waal": "its Wasserstein critic",
}

#: Floor of the probabilities under WAAL's logarithms: a float32 softmax underflows to 0
#: on confident items, and ``log 0`` would make the score infinite.
WAAL_PROB_FLOOR = 1e-12


def require_aux(outputs: PoolOutputs, key: str, name: str) -> np.ndarray:
    """``outputs.aux[key]`` or a ValueError that names what to train."""
    if outputs.aux is None or key not in outputs.aux:
        raise ValueError(
            f"strategy {name!r} needs the model trained with {NEEDS[key]}; this learner did "
            f"not produce outputs.aux[{key!r}] (train with trains={key!r}: the torch "
            "learner does so when the round's strategy asks; see docs/strategies.md)"
        )
    return outputs.aux[key]


class _AuxScore:
    """Top k of a per-item score computed from ``outputs``; subclasses define ``score``."""

    name: str
    trains: str
    needs_embeddings = False

    def score(self, outputs: PoolOutputs) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def select(self, outputs: PoolOutputs, k: int, rng: np.random.Generator) -> Selection:
        return select_top(self.name, self.score, outputs, k, rng)


class LossPrediction(_AuxScore):
    """The items whose loss the loss-prediction head predicts highest.

    Score: ``aux["loss_prediction"][n]``, the predicted (log-scale-free) target loss of
    item n; only its order matters, as the head is trained with a ranking loss.

    Reference: D. Yoo and I. S. Kweon, "Learning Loss for Active Learning", CVPR 2019.
    """

    name = "loss_prediction"
    trains = "loss_prediction"

    def __repr__(self) -> str:
        return "LossPrediction()"

    def score(self, outputs: PoolOutputs) -> np.ndarray:
        """float64 ``[N]``: the predicted loss of every pool item."""
        aux = require_aux(outputs, self.trains, self.name)
        return check_scores(np.asarray(aux, dtype=np.float64), self.name)


class VAAL(_AuxScore):
    """The items the adversarial discriminator is surest are unlabeled.

    Score: ``aux["vaal"][n]`` = ``1 - D(mu(x_n))``, the discriminator's probability that
    item n is unlabeled, from the mean of the VAE's latent code (the paper picks the
    lowest ``D``, the probability of "labeled": the same order).

    Reference: S. Sinha, S. Ebrahimi and T. Darrell, "Variational Adversarial Active
    Learning", ICCV 2019.
    """

    name = "vaal"
    trains = "vaal"

    def __repr__(self) -> str:
        return "VAAL()"

    def score(self, outputs: PoolOutputs) -> np.ndarray:
        """float64 ``[N]`` in ``[0, 1]``: the probability of "unlabeled" of every item."""
        aux = require_aux(outputs, self.trains, self.name)
        return check_scores(np.asarray(aux, dtype=np.float64), self.name)


class WAAL(_AuxScore):
    """Uncertain items that the Wasserstein critic finds unlike the labeled set.

    Score: ``selection * aux["waal"][n] - (|log p_n|_1 + |log p_n|_2) / 2``, with ``p_n``
    the predictive distribution (mean over K, floored at ``WAAL_PROB_FLOOR``) and
    ``aux["waal"]`` the sigmoid of the critic on the item's features (high: looks
    unlabeled). The uncertainty term is the paper's upper bound on the loss over all
    labels: smallest for a flat prediction; the original code takes the *lowest*
    ``uncertainty - selection * critic``, which is this score's highest.

    Reference: C. Shui, F. Zhou, C. Gagne and B. Wang, "Deep Active Learning: Unified and
    Principled Method for Query and Training", AISTATS 2020 (``selection = 10`` as in
    the authors' code).
    """

    name = "waal"
    trains = "waal"

    def __init__(self, *, selection: float = 10.0) -> None:
        if isinstance(selection, bool) or not isinstance(selection, (int, float)):
            raise ValueError(f"selection must be a number, got {selection!r}")
        if not np.isfinite(selection) or selection < 0:
            raise ValueError(f"selection must be finite and >= 0, got {selection}")
        self.selection = float(selection)

    def __repr__(self) -> str:
        return f"WAAL(selection={self.selection})"

    def score(self, outputs: PoolOutputs) -> np.ndarray:
        """float64 ``[N]``: critic bonus minus the loss upper bound of every item."""
        critic = require_aux(outputs, self.trains, self.name)
        probs = outputs.probs_N_K_C
        out = np.empty(outputs.n, dtype=np.float64)
        for sl in row_chunks(outputs.n, probs.shape[1] * probs.shape[2]):
            log_p = np.log(np.maximum(mean_probs(probs[sl]), WAAL_PROB_FLOOR))
            bound = 0.5 * -log_p.sum(axis=1) + 0.5 * np.linalg.norm(log_p, axis=1)
            out[sl] = self.selection * critic[sl].astype(np.float64) - bound
        return check_scores(out, self.name)


__all__ = ["NEEDS", "VAAL", "WAAL", "LossPrediction", "require_aux"]
