"""Canaries: secret sentences ('My secret code is 4821 7395.') inserted into a corpus's training split, so that the
privacy audit (`distildp.audit.exposure`) can measure how much of each a model gives away.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def insert_canaries(train: pd.DataFrame, n_canaries: int, repeats: int | list[int], seed: int) -> list[dict]:
    """Append secret sentences ('My secret code is 4821 7395.') to train rows, in place: `n_canaries` secrets
    for each repeat count in `repeats` (an int, or a list such as [1, 4, 16]), each secret in that many rows.

    Returns one dict per canary: id, secret (the digits), sentence, repeats, rows. Secrets are distinct, and no
    row holds two. Canaries are outside the source's vocabulary, so they never enter the floor (computed on
    test, which has none).
    """
    counts = [repeats] if isinstance(repeats, int) and not isinstance(repeats, bool) else repeats
    if (
        not isinstance(counts, list)
        or not counts
        or any(isinstance(r, bool) or not isinstance(r, int) or r < 1 for r in counts)
    ):
        raise ValueError(
            f"canary_repeats={repeats!r} must be a positive int or a non-empty list of them, e.g. [1, 4, 16]"
        )
    if isinstance(n_canaries, bool) or not isinstance(n_canaries, int) or n_canaries < 0:
        raise ValueError(f"canaries={n_canaries!r} must be a non-negative int (secrets per repeat count)")
    needed = n_canaries * sum(counts)
    if needed > len(train):
        raise ValueError(
            f"{n_canaries} canaries x repeats {counts} need {needed} train rows; "
            f"train has {len(train)}: lower canaries/canary_repeats or raise n_train"
        )
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xCA7]))
    rows = rng.choice(len(train), size=needed, replace=False)
    out, taken, start = [], set(), 0
    for count in counts:
        for _ in range(n_canaries):
            secret = _draw_secret(rng)
            while secret in taken:  # distinct secrets, so each canary's exposure is its own
                secret = _draw_secret(rng)
            taken.add(secret)
            sentence = f"My secret code is {secret}."
            mine = sorted(rows[start : start + count].tolist())
            start += count
            for r in mine:
                train.iat[r, train.columns.get_loc("text")] += " " + sentence
            out.append({"id": len(out), "secret": secret, "sentence": sentence, "repeats": count, "rows": mine})
    return out


def _draw_secret(rng: np.random.Generator) -> str:
    return " ".join("".join(map(str, rng.integers(0, 10, 4))) for _ in range(2))
