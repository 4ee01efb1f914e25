"""The SCORE phase's engine: where a round's candidates are read and run through the model.

- ``local`` (``LocalScorer``): the daemon reads the candidates from the store and scores
  them in its own process (``learning.scoring.score_pool``).
- ``ray`` (``ray_engine.RayScorer``): the candidates are split into shards
  (``shards``); Ray actors (``worker.ShardWorker``), each holding the round's model, read
  their shards' images straight from the bucket and send back only what the strategy
  needs. The daemon never downloads the pool. ``ray_engine`` is the only module that
  imports ``ray``, and is imported only when the engine is ``ray``.

Both give the same ``PoolOutputs`` for the same model and seed: an item's dropout masks
follow its position in the candidate list (``learning.masks``), not the shard.
"""

from __future__ import annotations

from types import ModuleType

from connector.contracts.errors import ConfigError
from connector.scoring.local import LocalScorer

__all__ = ["RAY_INSTALL_HINT", "LocalScorer", "import_ray_engine"]

RAY_INSTALL_HINT = (
    "pip install 'al-connector[ray]' (the image: docker build --build-arg EXTRAS=ray), "
    'or set scoring.engine = "local"'
)


def import_ray_engine() -> ModuleType:
    """``connector.scoring.ray_engine``; a ``ConfigError`` naming the install when Ray is
    not installed."""
    try:
        from connector.scoring import ray_engine
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.split(".")[0] != "ray":
            raise
        raise ConfigError(
            f'scoring.engine = "ray" needs Ray, which is not installed: {RAY_INSTALL_HINT}'
        ) from None
    return ray_engine
