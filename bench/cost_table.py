"""docs/scaling.md's Argentina cost section, regenerated from ``cropmap plan ARG`` and the cost figures.

Plans ARG as ``cropmap plan ARG`` does (``cropmap.jobs.plan.plan_run``, the catalog not asked), then writes
between the markers of docs/scaling.md: the plan's estimate lines, the results and every input of the cost
model as tables (``cropmap.jobs.cost_model.estimate_table``: value, unit, kind, source, command, date), and
what-if rows: the same plan with one figure changed, to show what stands between the estimate and a
target. The figures are the package's (``cropmap/jobs/cost_figures.json``, written by the bench scripts'
``--record``) or ``$CROPMAP_COST_FIGURES``. tests/test_plan.py checks the section against the figures.

Run: .venv/bin/python bench/cost_table.py [--doc docs/scaling.md] [--check]
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- cost: begin (bench/cost_table.py writes this section) -->", "<!-- cost: end -->"
#: what-if rows: (what changes, the figures changed)
WHAT_IF = (
    # the unmeasured GPU rate is the input that moves the estimate most: at a quarter of the assumed
    # utilisation the GPU-hours quadruple
    ("the GPU at 10 % of its bf16 peak instead of 40 % (not measured: no GPU lent)", {"gpu_utilisation": 0.1}),
    ("the same on 8 GPUs", {"gpu_utilisation": 0.1, "gpus": 8}),
    ("the host work at issue 35's bound (1.5 CPU-s/Mpx) instead of the measured 0.85", {"predict_host_cpu_s_per_mpx": 1.5}),
    ("no GPU: inference on the 128 vCPU (`--gpus 0`)", {"gpus": 0}),
)


def section(code: str = "ARG") -> str:
    """The Markdown between the markers: the plan's estimate, the tables, the what-if rows."""
    from cropmap.jobs.cost_model import (derived_gpu_px_per_s, estimate_cost, estimate_lines, estimate_table,
                                         load_figures)
    from cropmap.jobs.plan import plan_run
    from cropmap.scenarios import resolve_run

    figures = load_figures()
    plan = plan_run(resolve_run(code), probe=False)
    e = plan.estimate
    zones = ", ".join(f"EPSG:{k} {v:,}" for k, v in plan.zones.items())
    head = estimate_lines(e, plan.purpose, figures)[:3]
    out = [BEGIN, "", f"`cropmap plan {code}` ({plan.tiles:,} tiles of {plan.tile_px} px; zones {zones}), "
           "its estimate lines:", "", *(f"    {line}" for line in head), "", *estimate_table(e, figures), "",
           "What moves the estimate (the same plan, one input changed as named):", "",
           "| change | GPU-h | wall h | $ on demand | $ spot |", "|---|---:|---:|---:|---:|",
           f"| none (the figures above) | {e.gpu_hours:,.1f} | {e.wall_hours:,.1f} | ${e.dollars:,.0f} | "
           f"${e.spot_dollars:,.0f} |"]
    for what, changes in WHAT_IF:
        changed = {k: replace(v, value=changes.get(k, v.value)) for k, v in figures.items()}
        if changed["gpu_px_per_s"].kind == "derived":  # its inputs may have changed
            changed["gpu_px_per_s"] = replace(changed["gpu_px_per_s"], value=derived_gpu_px_per_s(changed))
        cluster = {"gpus": changes["gpus"]} if "gpus" in changes else {}  # the cluster, not a figure
        w = estimate_cost(plan.tiles, plan.tile_px, zone_tiles=list(plan.zones.values()), figures=changed, **cluster)
        out.append(f"| {what} | {w.gpu_hours:,.1f} | {w.wall_hours:,.1f} | ${w.dollars:,.0f} | ${w.spot_dollars:,.0f} |")
    out += ["", f"Regenerate: `.venv/bin/python bench/cost_table.py` (after a bench's `--record`).", "", END]
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--doc", type=Path, default=REPO / "docs" / "scaling.md")
    ap.add_argument("--check", action="store_true", help="exit 1 if the doc's section differs, write nothing")
    args = ap.parse_args()
    text = args.doc.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{args.doc} has no '{BEGIN}' ... '{END}' markers")
    start, stop = text.index(BEGIN), text.index(END) + len(END)
    new = text[:start] + section() + text[stop:]
    if args.check:
        print("up to date" if new == text else f"{args.doc}: the cost section differs from the figures")
        return 0 if new == text else 1
    args.doc.write_text(new)
    print(f"wrote the cost section of {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
