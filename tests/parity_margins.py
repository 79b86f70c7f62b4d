"""The margin of every parity tolerance: run the parity tests 3 times at 1 and at 2 threads (the kernels differ)
and print, per check, the largest difference seen, its tolerance and the ratio.

    python tests/parity_margins.py            # ~15 min on 2 cores
    python tests/parity_margins.py --runs 1 tests/test_logprobs.py
"""

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARITY = ["tests/test_logprobs.py", "tests/test_rollout.py", "tests/test_update_plan.py",
          "tests/test_distributed.py"]

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("files", nargs="*", default=PARITY, help="test files holding parity checks")
parser.add_argument("--runs", type=int, default=3, help="repeats per thread count")
args = parser.parse_args()
seen = collections.defaultdict(dict)  # name -> {threads: max observed}
tols = {}
for threads in (1, 2):
    for _ in range(args.runs):
        with tempfile.NamedTemporaryFile(suffix=".jsonl") as log:
            env = dict(os.environ, OMP_NUM_THREADS=str(threads), NANOREVISUAL_MARGINS=log.name)
            done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args.files],
                                  cwd=ROOT, env=env, capture_output=True, text=True)
            if done.returncode:  # a check over its tolerance is recorded before it fails: it shows below
                print(f"{threads} thread(s): " + done.stdout.strip().splitlines()[-1], flush=True)
            for r in map(json.loads, open(log.name)):
                seen[r["name"]][threads] = max(seen[r["name"]].get(threads, 0.0), r["observed"])
                tols[r["name"]] = r["tol"]
print(f"| check | tolerance | max at 1 thread | max at 2 threads | margin |\n|---|---:|---:|---:|---:|")
for name in sorted(seen):
    worst = max(seen[name].values())
    margin = "exact" if tols[name] == 0 and worst == 0 else f"{tols[name] / worst:.0f}x" if worst else "inf"
    print(f"| {name} | {tols[name]:.0e} | {seen[name].get(1, 0):.2e} | {seen[name].get(2, 0):.2e} | {margin} |")
