"""The compiled -sum p log p kernels (strategies/_xlogx.c) against float64 references.

The autouse ``kernels`` fixture already runs every strategy test on both the compiled
kernels and the torch fallback; these tests pin the kernels themselves down: accuracy,
edge values, every tail length of the 8-lane loops, both instruction-set variants, and
the buffer checks of the C entry points.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from strategies import bald, compiled_kernels, entropy, use_compiled_kernels
from strategies._kernels import _xlogx, neg_xlogx_rowsum

from .conftest import softmax


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


VARIANTS = ["baseline"] + (["avx2+fma"] if {"avx2", "fma"} <= _cpu_flags() else [])


@pytest.fixture(autouse=True)
def kernels() -> Iterator[str]:
    """Overrides the package's two-way fixture: this module drives the paths itself."""
    use_compiled_kernels(True)
    yield "compiled"
    use_compiled_kernels(True)


@pytest.fixture(params=VARIANTS)
def variant(request: pytest.FixtureRequest) -> Iterator[str]:
    before = _xlogx.variant()
    _xlogx.set_variant(request.param)
    try:
        yield request.param
    finally:
        _xlogx.set_variant(before)


def _neg_xlogx_f64(p: np.ndarray) -> np.ndarray:
    x = p.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(x > 0, x * np.log(np.where(x > 0, x, 1.0)), 0.0)
    out: np.ndarray = -terms.sum(axis=-1)
    return out


def _bald_f64(p: np.ndarray) -> np.ndarray:
    x = p.astype(np.float64)
    return _neg_xlogx_f64(x.mean(axis=1)) - _neg_xlogx_f64(x).mean(axis=1)


def test_the_install_built_the_compiled_kernels() -> None:
    # setup.py builds strategies._xlogx when a C compiler is present (make venv does);
    # without it the scorers still work through torch, but BALD is about 3x slower.
    assert _xlogx is not None, "strategies._xlogx was not built: install gcc, then make venv"
    assert compiled_kernels() in VARIANTS
    if "avx2+fma" in VARIANTS:
        assert _xlogx.variant() == "avx2+fma"  # chosen at import on a CPU that has it


@pytest.mark.parametrize("length", [*range(1, 34), 200])
def test_rows_match_float64_for_every_tail_length(variant: str, length: int) -> None:
    rng = np.random.default_rng(length)
    p = rng.dirichlet(np.full(length, 0.3), size=64).astype(np.float32)
    p[::7, 0] = 0.0  # exact zeros: 0 log 0 = 0
    got = np.empty(64)
    _xlogx.neg_xlogx_rows(p, got, 64, length)
    np.testing.assert_allclose(got, _neg_xlogx_f64(p), rtol=2e-6, atol=2e-7)


def test_rows_are_accurate_across_the_whole_float32_range(variant: str) -> None:
    rng = np.random.default_rng(0)
    x = np.exp(rng.uniform(np.log(1e-37), 0.0, size=80_000)).astype(np.float32)
    got = np.empty(x.size)
    _xlogx.neg_xlogx_rows(x, got, x.size, 1)  # one value per row: -x log x itself
    ref = _neg_xlogx_f64(x[:, None])
    assert np.max(np.abs(got - ref) / np.abs(ref)) < 5e-7


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0.0, 0.0),
        (-0.0, 0.0),
        (1e-42, 0.0),  # subnormal: its term is below 1e-40
        (1.0, 0.0),
        (0.5, 0.5 * np.log(2.0)),
        (-1e-3, np.nan),
        (np.nan, np.nan),
    ],
)
def test_edge_values(variant: str, value: float, expected: float) -> None:
    row = np.array([[value, 0.25, 0.0, 0.125, 0.0, 0.0, 0.0, 0.0, 0.0]], dtype=np.float32)
    got = np.empty(1)
    _xlogx.neg_xlogx_rows(row, got, 1, row.shape[1])
    rest = _neg_xlogx_f64(row[:, 1:])[0]
    if np.isnan(expected):
        assert np.isnan(got[0])
    else:
        assert got[0] == pytest.approx(expected + rest, abs=1e-6)


def test_infinity_gives_a_non_finite_sum(variant: str) -> None:
    got = np.empty(1)
    _xlogx.neg_xlogx_rows(np.array([[np.inf, 0.5]], dtype=np.float32), got, 1, 2)
    assert not np.isfinite(got[0])


@pytest.mark.parametrize(("k", "c"), [(1, 2), (2, 3), (3, 7), (5, 8), (20, 10), (4, 17), (7, 33)])
def test_bald_matches_float64(variant: str, k: int, c: int) -> None:
    rng = np.random.default_rng(k * 100 + c)
    p = softmax(rng.normal(0, 2, size=(50, k, c))).astype(np.float32)
    p[0] = p[0, :1]  # members that agree: BALD is 0
    got = np.empty(50)
    _xlogx.bald(p, got, 50, k, c)
    ref = _bald_f64(p)
    np.testing.assert_allclose(got, ref, atol=2e-6)
    assert abs(got[0]) < 2e-6


def test_bald_rows_with_a_negative_or_nan_value_are_nan(variant: str) -> None:
    p = np.full((3, 4, 10), 0.1, dtype=np.float32)
    p[0, 2, 3] = -0.1
    p[1, 3, 9] = np.nan
    p[2, 1, 0] = -0.0  # a zero
    got = np.empty(3)
    _xlogx.bald(p, got, 3, 4, 10)
    assert np.isnan(got[0]) and np.isnan(got[1])
    p[2, 1, 0] = 0.0
    assert got[2] == pytest.approx(_bald_f64(p[2:])[0], abs=1e-6)


def test_scorers_agree_across_variants_and_torch() -> None:
    rng = np.random.default_rng(3)
    p = softmax(rng.normal(0, 2, size=(3000, 20, 10))).astype(np.float32)
    results = {}
    before = _xlogx.variant()
    try:
        for name in VARIANTS:
            _xlogx.set_variant(name)
            results[name] = (bald(p), entropy(p))
    finally:
        _xlogx.set_variant(before)
    use_compiled_kernels(False)
    results["torch"] = (bald(p), entropy(p))
    for got_bald, got_entropy in results.values():
        np.testing.assert_allclose(got_bald, results["torch"][0], atol=2e-6)
        np.testing.assert_allclose(got_entropy, results["torch"][1], atol=2e-6)


def test_non_contiguous_or_float64_input_takes_the_torch_path(variant: str) -> None:
    p = softmax(np.random.default_rng(1).normal(size=(40, 12))).astype(np.float32)
    strided = p[:, ::2]
    np.testing.assert_allclose(
        neg_xlogx_rowsum(strided), _neg_xlogx_f64(strided), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(
        neg_xlogx_rowsum(p.astype(np.float64)), _neg_xlogx_f64(p), rtol=1e-12, atol=1e-12
    )


def test_the_entry_points_check_their_buffers(variant: str) -> None:
    p = np.full((4, 3, 5), 0.2, dtype=np.float32)
    out = np.empty(4)
    with pytest.raises(ValueError, match="expected 72 float32"):
        _xlogx.bald(p, out, 4, 3, 6)
    with pytest.raises(ValueError, match="expected 5 float64"):
        _xlogx.bald(p, out, 5, 3, 4)
    with pytest.raises(ValueError, match="k and c must be >= 1"):
        _xlogx.bald(p, out, 4, 0, 5)
    with pytest.raises(ValueError, match="length must be >= 1"):
        _xlogx.neg_xlogx_rows(p, out, 4, 0)
    with pytest.raises(TypeError):
        _xlogx.bald(p, bytes(32), 4, 3, 5)  # a read-only output buffer
    with pytest.raises(ValueError, match="not available"):
        _xlogx.set_variant("avx512")
