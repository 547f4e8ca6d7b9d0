"""Percentile-bootstrap confidence intervals of means and of paired differences (numpy, seeded).

A paired difference resamples example indices jointly: candidate and baseline answers to the same
prompt stay together, so per-prompt difficulty cancels out and the interval is as narrow as the data allows.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tuneloop.api.evaluation import BootstrapSpec, Score

# Resampled index matrices are built in chunks of at most this many cells (8 bytes each).
_CHUNK_CELLS = 4_000_000


def _resampled_means(values: np.ndarray, samples: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    count = len(values)
    rows_per_chunk = max(1, _CHUNK_CELLS // count)
    means = np.empty(samples)
    for start in range(0, samples, rows_per_chunk):
        rows = min(rows_per_chunk, samples - start)
        indices = rng.integers(0, count, size=(rows, count))
        means[start:start + rows] = values[indices].mean(axis=1)
    return means


def bootstrap_mean(values: Sequence[float], spec: BootstrapSpec) -> Score:
    """The mean and its percentile interval at spec.confidence."""
    array = np.asarray(values, dtype=float)
    if array.size == 0:
        raise ValueError("bootstrap_mean needs at least one value")
    mean = float(array.mean())
    means = _resampled_means(array, spec.samples, spec.seed)
    tail = (1 - spec.confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    # Quantile interpolation can land a rounding error outside the observed mean.
    return Score(value=mean, low=min(float(low), mean), high=max(float(high), mean))


def bootstrap_difference(candidate: Sequence[float], baseline: Sequence[float], spec: BootstrapSpec) -> Score:
    """Mean of candidate minus baseline over the same examples, with its paired interval."""
    if len(candidate) != len(baseline):
        raise ValueError(f"paired bootstrap needs equal lengths, got {len(candidate)} and {len(baseline)}")
    return bootstrap_mean(np.asarray(candidate, dtype=float) - np.asarray(baseline, dtype=float), spec)
