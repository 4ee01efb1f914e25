"""Duplicates by content, found just before a push: the same image under two keys is
pushed once.

An item's content hash comes for free from a single-part S3 ETag (the MD5 of its bytes,
stored at listing); otherwise its bytes are read and hashed here, which costs one read of
each item about to be pushed (the batch, never the pool). An item whose hash equals that
of an item queued or done, or of one ahead of it in the batch (by priority), becomes
``duplicate``, pointing at that item, and is not pushed.

A duplicate is never trained on: its original's label already is, and a second copy of
the same image would count it twice (or leak it between the training and validation
splits). ``al-connector items show KEY`` names the original (``duplicate_of``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from connector.rounds.context import RoundContext
from connector.state import Round, SelectedItem
from connector.state.alerts import PUSHABLE
from connector.state.schema import bytes_content_hash
from connector.storage.window import raise_store_errors

log = logging.getLogger(__name__)


def hash_unknown(ctx: RoundContext, item_ids: Sequence[str]) -> dict[str, str | None]:
    """Content hashes of ``item_ids``: stored ones, and the others read, hashed and
    stored. An item that cannot be read keeps None (its push goes on as before)."""
    hashes = ctx.state.content_hashes(item_ids)
    unknown = [i for i in item_ids if hashes.get(i) is None]
    found: dict[str, str] = {}
    reads = ctx.ports.store.read_many(unknown, max_workers=ctx.cfg.read_concurrency)
    for key, data in raise_store_errors(reads):
        if isinstance(data, bytes):
            found[key] = bytes_content_hash(data)
    if found:
        ctx.state.set_content_hashes(found)
    return {**hashes, **found}


def drop_duplicates(
    ctx: RoundContext, rnd: Round, pending: list[SelectedItem]
) -> tuple[list[SelectedItem], int]:
    """``pending`` (in priority order) without the items that duplicate another's bytes,
    and how many duplicates the round found. Those are marked ``duplicate`` (committed
    before anything is pushed, so a retry after a crash drops the same ones)."""
    # Queued or done items from before hashes were kept: hashed once, here.
    hash_unknown(ctx, ctx.state.unhashed_holding_content())
    statuses = ctx.state.statuses([s.item_id for s in pending])
    fresh = [s.item_id for s in pending if statuses.get(s.item_id, "discovered") in PUSHABLE]
    hashes = hash_unknown(ctx, fresh)
    seen = ctx.state.originals_by_hash([h for h in hashes.values() if h])
    originals: dict[str, str] = {}
    for item in fresh:
        digest = hashes.get(item)
        if digest is None:
            continue
        original = seen.setdefault(digest, item)
        if original != item:
            originals[item] = original
    if originals:
        ctx.state.mark_duplicates(rnd.round, originals)
    dups = ctx.state.duplicates_of_round(rnd.round)
    if dups:
        log.info(
            "round %d: %d item(s) not pushed: the same image as another item, e.g. %s = %s",
            rnd.round,
            len(dups),
            *dups[0],
        )
    dropped = {i for i, _ in dups}
    return [s for s in pending if s.item_id not in dropped], len(dups)
