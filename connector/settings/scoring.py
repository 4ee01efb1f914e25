"""The ``[scoring]`` section: where the SCORE phase runs (``connector.scoring``).

Its own module so that the engine's settings sit together; ``models.Settings`` holds it
like every other section.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class ScoringSettings(BaseModel):
    """Where the SCORE phase runs: in the daemon's process, or on a Ray cluster
    (``connector.scoring``, docs/scale.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    engine: Literal["local", "ray"] = Field(
        "local",
        description="local: the daemon scores the pool; ray: Ray workers score shards of "
        "it, reading the images from the bucket (pip install 'al-connector[ray]').",
    )
    ray_address: str = Field(
        "local",
        description="The Ray cluster: `local` starts one on this machine (on loopback), "
        "`auto` joins the one `ray start` runs here, `ray://HOST:10001` a head's client "
        "port (KubeRay), `HOST:6379` a head, from a node of its cluster.",
    )
    workers: int = Field(
        2, ge=1, le=10_000, description="Ray workers (actors that keep the model loaded)."
    )
    cpus_per_worker: float = Field(
        1.0, gt=0, le=512, description="CPUs each worker reserves; its torch threads."
    )
    shard_size: int = Field(
        2048, ge=1, le=1_000_000, description="Candidates per Ray task (a unit of retry)."
    )
    max_shard_attempts: int = Field(
        3,
        ge=1,
        le=20,
        description="Tries of one shard whose worker died before the SCORE attempt fails "
        "(the round core then retries the phase: rounds.max_phase_attempts).",
    )
    send_credentials: bool = Field(
        True,
        description="Hand storage.access_key_id / secret_access_key to the workers (never "
        "logged); false: the workers use their own AWS chain (environment, instance role).",
    )
    connect_timeout_s: float = Field(
        10.0, gt=0, le=600, description="How long start-up and check wait for the cluster."
    )

    @model_validator(mode="after")
    def _address(self) -> ScoringSettings:
        if not self.ray_address.strip():
            raise ValueError(
                'scoring.ray_address is empty; set "local", "auto" or the head\'s address'
            )
        return self
