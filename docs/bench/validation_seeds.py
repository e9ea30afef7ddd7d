"""Mean ± sample sd over a sweep's seeds of the validation curves (validation.json of each job), per step:
the overall final score (mean over styles) and each style's attribution. Usage: python validation_seeds.py SWEEP"""

import json
import statistics
import sys
from pathlib import Path


def ms(xs):
    xs = [x for x in xs if isinstance(x, (int, float))]
    if not xs:
        return "—"
    return f"{statistics.mean(xs):.3f} ± {statistics.stdev(xs):.3f}" if len(xs) > 1 else f"{xs[0]:.3f}"


jobs = [json.loads(p.read_text()) for p in sorted(Path(sys.argv[1]).glob("*/validation.json"))]
styles = sorted(jobs[0]["styles"])
steps = jobs[0]["steps"]
head = ["step", "final (mean of styles)", "attribution (mean)"] + [f"attribution {s}" for s in styles]
rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
for k in steps:
    at = [[j["styles"][s][str(k)].get(m) for s in styles] for j in jobs for m in ("final", "attribution")]
    finals = [statistics.mean([v for v in j_final if v is not None]) for j_final in at[0::2] if any(v is not None for v in j_final)]
    attrs = [statistics.mean([v for v in a if v is not None]) for a in at[1::2] if any(v is not None for v in a)]
    cells = [str(k), ms(finals), ms(attrs)]
    cells += [ms([j["styles"][s][str(k)].get("attribution") for j in jobs]) for s in styles]
    rows.append("| " + " | ".join(cells) + " |")
best = [j["best_step"] for j in jobs]
print(f"{len(jobs)} seeds; best step per style and seed: {best}\n")
print("\n".join(rows))
