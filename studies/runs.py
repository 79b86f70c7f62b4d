"""Study tooling shared by the demo, the PAD studies and the plots: run the project's scripts as a user would, and
Student's t quantiles for confidence intervals (no scipy)."""

import contextlib
import functools
import math
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_script(script, *args, log=None, threads=None):
    """Run one of the project's scripts (train_sft.py, ... or a module such as studies.pad_explorer) as a user
    would, from the repository root; returns its wall time. Output streams to the terminal, or to the file `log`;
    threads caps torch's CPU threads (several runs share the cores). Raises RuntimeError naming the command and the
    log when it fails."""
    target = [os.path.join(ROOT, script)] if script.endswith(".py") else ["-m", script]
    cmd = [sys.executable, *target, *map(str, args)]
    env = dict(os.environ, PYTHONPATH=ROOT, **({"OMP_NUM_THREADS": str(threads)} if threads else {}))
    if log:
        os.makedirs(os.path.dirname(os.path.abspath(log)), exist_ok=True)
    else:
        print("\n$ " + " ".join(cmd[1:]), flush=True)
    t0 = time.perf_counter()
    with open(log, "w") if log else contextlib.nullcontext() as f:
        done = subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT if log else None)
    if done.returncode != 0:
        raise RuntimeError(f"failed ({done.returncode}): {' '.join(cmd)}" + (f"; log: {log}" if log else ""))
    return time.perf_counter() - t0


@functools.lru_cache(maxsize=None)
def t_quantile(p, df):
    """Quantile of Student's t with df degrees of freedom (p in (0.5, 1)): bisection on the CDF, the CDF by
    Simpson's rule on the density (no scipy)."""
    log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def cdf(x, intervals=2000):
        h = x / intervals
        f = [math.exp(log_norm - (df + 1) / 2 * math.log1p((i * h) ** 2 / df)) for i in range(intervals + 1)]
        return 0.5 + h / 3 * (f[0] + f[-1] + 4 * sum(f[1:-1:2]) + 2 * sum(f[2:-1:2]))

    low, high = 0.0, 1.0
    while cdf(high) < p:
        high *= 2
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if cdf(mid) < p else (low, mid)
    return (low + high) / 2
