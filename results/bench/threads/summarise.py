"""Two 1-thread runs side by side against one 2-thread run: training-step throughput per round.

    python results/bench/threads/summarise.py      # reads the A<r>.json / B<r>a.json / B<r>b.json records here

A<r>: one `scripts.bench train` process, threads=2, alone. B<r>a, B<r>b: two processes, threads=1, at the same
time. Round r ran A then B (odd r) or B then A (even r); run.sh is the script. Ratio per round and method =
(steps/s of B<r>a + B<r>b) / steps/s of A<r> = 2 * s_per_step(A) / mean s_per_step(B): above 1, the two
1-thread runs together get more optimizer steps done per second than the 2-thread run.
"""

import json
import os
import statistics

HERE = os.path.dirname(os.path.abspath(__file__))


def step(record: dict, method: str) -> float:
    return next(c for c in record["cells"] if c["method"] == method)["s_per_step"]["median"]


rounds = sorted(int(f[1:-5]) for f in os.listdir(HERE) if f.startswith("A") and f.endswith(".json"))
ratios: dict[str, list[float]] = {}
print("| round | method | s/step, 1 x 2 threads | s/step, 2 x 1 thread (each) | throughput ratio |")
print("|---|---|---|---|---|")
for r in rounds:
    a = json.load(open(os.path.join(HERE, f"A{r}.json")))
    bs = [json.load(open(os.path.join(HERE, f"B{r}{x}.json"))) for x in "ab"]
    for c in a["cells"]:
        m, sa = c["method"], c["s_per_step"]["median"]
        sb = [step(b, m) for b in bs]
        ratio = 2 * sa / statistics.mean(sb)
        ratios.setdefault(m, []).append(ratio)
        print(f"| {r} | {m} | {sa:.3f} | {sb[0]:.3f} / {sb[1]:.3f} | {ratio:.3f} |")
print()
for m, v in ratios.items():
    print(f"- {m}: median {statistics.median(v):.3f} (min {min(v):.3f}, max {max(v):.3f}, {len(v)} rounds)")
