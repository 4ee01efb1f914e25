"""BatchBALD: greedy maximisation of the joint mutual information of a batch.

The batch score is ``I[y_1, ..., y_b; w] = H[y_1..y_b] - sum_i E_w H[y_i | w]``. Greedy
step b adds the candidate with the largest conditional mutual information
``I[y_n; w | y_1..y_{b-1}]`` (the marginal gain; it is what ``Selection.scores`` holds).

How it is computed here (notation: K samples of ``w``, C classes, M configurations):

* The already-chosen labels ``y_B`` are kept as configurations ``m`` with a weight
  ``pi_m`` and a posterior over the K samples, ``W[m, k] = p(w_k | y_B = m)``. While
  ``C^b`` is at most ``num_samples`` the configurations are all label tuples with their
  exact probabilities; past that, ``num_samples`` tuples are drawn from the exact joint
  and then extended by ancestral sampling (each draw is an exact sample of ``p(y_B)``,
  so the weights stay uniform and do not degenerate).
* For every candidate n, ``p(y_n | y_B = m) = sum_k W[m, k] p_n[k, :]``: one matrix
  product ``W_M_K @ probs_K_(nC)`` per chunk of candidates, and the gain is
  ``sum_m pi_m (H[p(y_n | m)] - sum_k W[m, k] H[p_n[k]])``, each term >= 0 by Jensen.
  Memory is O(M * chunk * C), never N x M x C.
* Lazy greedy (Minoux 1978): the gain is submodular (the labels are independent given
  ``w``), so a candidate's last computed gain, or its BALD, bounds its gain now. Each
  step evaluates candidates in order of their bound and stops once the best gain found
  beats every remaining bound. With exact configurations this picks exactly what the
  plain greedy picks; with sampled ones it is the same up to the sampling noise.
* ``pool_limit``: only the ``pool_limit`` items with the highest BALD (at least k) are
  candidates. A step is *certified* when its chosen gain is at least the largest BALD
  left outside the candidates: since a gain never exceeds BALD, no excluded item could
  have won that step. ``Selection.info`` reports ``certified_steps``; pass
  ``pool_limit=None`` for the whole pool.

Reference: A. Kirsch, J. van Amersfoort and Y. Gal, "BatchBALD: Efficient and Diverse
Batch Acquisition for Deep Bayesian Active Learning", NeurIPS 2019 (arXiv:1906.08158).
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import numpy as np

from strategies._common import check_rng, clip_k, empty_selection, top_k_order
from strategies._kernels import check_probs_shape, neg_xlogx_rowsum, torch_threads
from strategies.base import PoolOutputs, Selection
from strategies.bayesian import bald

if TYPE_CHECKING:
    import torch

#: Posterior weights and probabilities below this are flushed to 0 in the float32 matrix
#: products: their products would be float32 denormals, which make the products ~50x
#: slower on x86 and carry nothing at float32 precision (an entropy term p log p at
#: p = 1e-12 is 3e-11). Products of two flushed-or-larger values stay normal floats.
FLUSH = 1e-12
#: Exact configurations with a probability below this share of the total are dropped.
PI_FLOOR = 1e-10
_TINY32 = float(np.finfo(np.float32).tiny)


def _positive_int(name: str, value: int | None, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        extra = " or None" if allow_none else ""
        raise ValueError(f"{name} must be a positive integer{extra}, got {value!r}")
    return value


class _Joint:
    """The configurations of the chosen labels: weights ``pi_M`` and ``log W_M_K``."""

    def __init__(self, k: int, num_samples: int, rng: np.random.Generator) -> None:
        self.num_samples = num_samples
        self.rng = rng
        self.exact = True
        self.pi_M = np.ones(1, dtype=np.float64)
        self.log_w_M_K: np.ndarray = np.full((1, k), -np.log(k), dtype=np.float64)
        self._refresh()

    def _refresh(self) -> None:
        import torch  # here, not at import: listing the strategies needs no torch

        w = np.exp(self.log_w_M_K)
        w32 = w.astype(np.float32)
        w32[w32 < FLUSH] = 0.0
        self.w32_M_K = torch.from_numpy(w32)
        self.pi32_M = torch.from_numpy(self.pi_M.astype(np.float32))
        #: ``sum_m pi_m W[m, k]``: the average posterior weight of each sample of ``w``.
        self.wbar_K = np.einsum("m,mk->k", self.pi_M, w)

    @property
    def m(self) -> int:
        return int(self.pi_M.shape[0])

    def add(self, p_K_C: np.ndarray) -> None:
        """Condition on the label of one more chosen item with probabilities ``p_K_C``."""
        p = p_K_C.astype(np.float64)
        c = p.shape[1]
        w = np.exp(self.log_w_M_K)
        q_M_C = np.einsum("mk,kc->mc", w, p)  # p(y_new = c | configuration m)
        with np.errstate(divide="ignore"):
            log_p_K_C = np.log(p)
        if self.exact and self.m * c <= self.num_samples:
            pi = (self.pi_M[:, None] * q_M_C).ravel()
            # Configurations with q = 0 get NaN rows here and are dropped by `keep`.
            with np.errstate(divide="ignore", invalid="ignore"):
                log_w = self.log_w_M_K[:, None, :] + log_p_K_C.T[None, :, :]
                log_w -= np.log(q_M_C)[:, :, None]
            # Configurations below PI_FLOOR carry no weight at float32 precision.
            keep = pi > PI_FLOOR * pi.sum()
            self.log_w_M_K = log_w.reshape(-1, log_w.shape[2])[keep]
            self.pi_M = pi[keep] / pi[keep].sum()
        else:
            if self.exact:
                pick = self.rng.choice(self.m, size=self.num_samples, p=self.pi_M)
                self.log_w_M_K = self.log_w_M_K[pick]
                q_M_C = q_M_C[pick]
                self.pi_M = np.full(self.num_samples, 1.0 / self.num_samples)
                self.exact = False
            cdf = np.cumsum(q_M_C, axis=1)
            cdf /= cdf[:, -1:]
            u = self.rng.random(q_M_C.shape[0])
            y = np.minimum((cdf <= u[:, None]).sum(axis=1), c - 1)
            rows = np.arange(q_M_C.shape[0])
            self.log_w_M_K = self.log_w_M_K + log_p_K_C[:, y].T - np.log(q_M_C[rows, y])[:, None]
        # Renormalise each row against drift: W[m, :] is a distribution over the K samples.
        top = self.log_w_M_K.max(axis=1, keepdims=True)
        self.log_w_M_K -= top + np.log(np.exp(self.log_w_M_K - top).sum(axis=1, keepdims=True))
        self._refresh()


class BatchBALD:
    """Greedy BatchBALD with exact-then-sampled joint entropies (Kirsch et al. 2019).

    Parameters:
        num_samples: configurations kept for the joint of the chosen labels (exact while
            ``C^b`` fits, then Monte-Carlo samples); more is less noisy and slower.
        pool_limit: candidates are the top ``max(pool_limit, k)`` items by BALD; ``None``
            uses the whole pool (see the module docstring for the certificate).
        chunk_rows: candidates evaluated per matrix product.
        lazy: lazy greedy (exact speed-up); ``False`` evaluates every candidate each step.
    """

    name = "batchbald"
    needs_embeddings = False

    def __init__(
        self,
        *,
        num_samples: int = 1000,
        pool_limit: int | None = 4096,
        chunk_rows: int = 64,
        lazy: bool = True,
    ) -> None:
        self.num_samples = int(_positive_int("num_samples", num_samples) or 1)
        self.pool_limit = _positive_int("pool_limit", pool_limit, allow_none=True)
        self.chunk_rows = int(_positive_int("chunk_rows", chunk_rows) or 1)
        if not isinstance(lazy, bool):
            raise ValueError(f"lazy must be true or false, got {lazy!r}")
        self.lazy = lazy

    def __repr__(self) -> str:
        return (
            f"BatchBALD(num_samples={self.num_samples}, pool_limit={self.pool_limit}, "
            f"chunk_rows={self.chunk_rows}, lazy={self.lazy})"
        )

    def score(self, outputs: PoolOutputs) -> np.ndarray:
        """BALD of every item: the gain of the first pick and a bound on every later gain."""
        return bald(outputs.probs_N_K_C)

    @torch_threads
    def select(self, outputs: PoolOutputs, k: int, rng: np.random.Generator) -> Selection:
        rng = check_rng(rng)
        probs = outputs.probs_N_K_C
        check_probs_shape(probs, self.name)
        n, n_k, n_c = probs.shape
        k = clip_k(k, n)
        if k == 0:
            return empty_selection(self.name)
        bald_N = bald(probs)
        limit = n if self.pool_limit is None else min(n, max(self.pool_limit, k))
        # Candidates in pool-index order, so that a tie goes to the lower pool index.
        cands = np.sort(top_k_order(bald_N, limit))
        outside = np.ones(n, dtype=bool)
        outside[cands] = False
        best_outside = float(bald_N[outside].max()) if limit < n else -np.inf

        ent_P_K = neg_xlogx_rowsum(
            np.ascontiguousarray(probs[cands]).reshape(limit * n_k, n_c)
        ).reshape(limit, n_k)
        bound_P = bald_N[cands].copy()
        alive = np.ones(limit, dtype=bool)
        joint = _Joint(n_k, self.num_samples, rng)
        with warnings.catch_warnings():
            # torch warns on read-only arrays; the pool is only read (index_select copies).
            warnings.simplefilter("ignore", UserWarning)
            import torch

            probs_t = torch.from_numpy(probs)
        picked: list[int] = []
        gains: list[float] = []
        evaluations = 0
        certified = 0
        exact_steps = 0
        for step in range(k):
            if step == 0:
                j = int(top_k_order(bound_P, 1)[0])
                gain = float(bound_P[j])
            else:
                j, gain, used = self._best(cands, ent_P_K, bound_P, alive, joint, probs_t)
                evaluations += used
            if joint.exact:
                exact_steps += 1
            if gain >= best_outside:
                certified += 1
            picked.append(j)
            gains.append(gain)
            alive[j] = False
            if step + 1 < k:
                joint.add(probs[cands[j]])
        idx = cands[np.asarray(picked, dtype=np.int64)]
        info = {
            "num_samples": self.num_samples,
            "pool_limit": self.pool_limit,
            "candidates": int(limit),
            "certified_steps": certified,
            "exact_steps": exact_steps,
            "evaluations": evaluations,
            "joint_mutual_information": float(np.sum(gains)),
        }
        return Selection(idx.astype(np.int64), np.asarray(gains, dtype=np.float64), self.name, info)

    def _best(
        self,
        cands: np.ndarray,
        ent_P_K: np.ndarray,
        bound_P: np.ndarray,
        alive: np.ndarray,
        joint: _Joint,
        probs_t: torch.Tensor,
    ) -> tuple[int, float, int]:
        """The alive candidate with the largest gain: (position, gain, evaluations)."""
        import torch

        live = np.flatnonzero(alive)
        order = live[np.argsort(-bound_P[live], kind="stable")]
        best_j, best_gain = -1, -np.inf
        pos = 0
        while pos < order.shape[0]:
            if self.lazy and best_j >= 0 and bound_P[order[pos]] < best_gain:
                break
            blk = order[pos : pos + self.chunk_rows]
            g = self._gains(probs_t[torch.from_numpy(cands[blk])], ent_P_K[blk], joint)
            bound_P[blk] = g
            top = g.max()
            j = int(blk[g == top].min())
            if top > best_gain or (top == best_gain and j < best_j):
                best_j, best_gain = j, float(top)
            pos += blk.shape[0]
        if not np.isfinite(best_gain):
            raise ValueError("batchbald produced a NaN or infinite gain; check the model outputs")
        return best_j, best_gain, pos

    @staticmethod
    def _gains(cand_n_K_C: torch.Tensor, ent_n_K: np.ndarray, joint: _Joint) -> np.ndarray:
        """``I[y_n; w | y_B]`` for a chunk of candidates, float64 ``[n]``.

        All in torch: mixing numpy's BLAS threads with torch's on the same cores makes
        both spin against each other (observed: 20x slower on 2 cores).
        """
        import torch

        n, n_k, n_c = cand_n_K_C.shape
        x_K_nC = cand_n_K_C.permute(1, 0, 2).to(torch.float32).reshape(n_k, n * n_c)
        x_K_nC = x_K_nC.masked_fill(x_K_nC < FLUSH, 0.0)
        q_M_nC = joint.w32_M_K @ x_K_nC
        buf = q_M_nC.clamp_min(_TINY32)
        buf.log_()
        buf.mul_(q_M_nC)
        # sum_m pi_m sum_c q log q, reduced over m by one matrix-vector product.
        plogp_nC = (joint.pi32_M @ buf).numpy()
        h_cond = -plogp_nC.reshape(n, n_c).sum(axis=1, dtype=np.float64)
        out: np.ndarray = h_cond - (ent_n_K * joint.wbar_K).sum(axis=1)
        return out
