"""Parity checks that record their margin. `within(name, observed, tol)` asserts observed <= tol; when the
environment names a file in NANOREVISUAL_MARGINS it also appends {"name", "observed", "tol"} to it, which
tests/parity_margins.py turns into the per-test margin table (3 runs at 1 and at 2 threads)."""

import json
import os

import torch

# The same fp32 terms summed in another order (1 vs 2 ranks, chunks, micro-batches, batch shapes): the relative
# error is a few units of roundoff (6e-8) times the reduction depth; 1e-5 leaves room for ~170 of them.
SUM_RTOL = 1e-5
# One tensor's gradient alone can cancel ~10x more than the whole gradient does (its norm well below its terms').
TENSOR_RTOL = 1e-4


def within(name, observed, tol):
    path = os.environ.get("NANOREVISUAL_MARGINS")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"name": name, "observed": float(observed), "tol": tol}) + "\n")
    assert observed <= tol, f"{name}: {observed:.3g} > tolerance {tol:.3g}"


def rel(a, b):
    """|a - b| / |a| for numbers."""
    return abs(a - b) / max(abs(a), 1e-30)


def rel_norm(xs, ys):
    """||xs - ys|| / ||xs|| over lists of tensors of equal shapes: the norm-wise relative difference, well
    conditioned where an element-wise one is not (an element that cancels to ~0 has no relative precision)."""
    assert [x.shape for x in xs] == [y.shape for y in ys]
    diff = sum(((x.double() - y.double()) ** 2).sum() for x, y in zip(xs, ys)) ** 0.5
    return float(diff / max(sum((x.double() ** 2).sum() for x in xs) ** 0.5, 1e-30))


def max_abs(xs, ys):
    return max(float((x.double() - y.double()).abs().max()) if x.numel() else 0.0 for x, y in zip(xs, ys))


def equal_trees(xs, ys):
    """0.0 when every tensor is bit-identical, else the largest absolute difference."""
    return 0.0 if all(torch.equal(x, y) for x, y in zip(xs, ys)) and len(xs) == len(ys) else max_abs(xs, ys)
