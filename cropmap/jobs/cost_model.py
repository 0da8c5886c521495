"""What a run costs, from figures measured by ``bench/`` (issue 35): CPU hours, GPU hours, wall hours, dollars.

The figures live in one versioned JSON file, :data:`FIGURES_FILE` (shipped with the package), or the file
``$CROPMAP_COST_FIGURES`` names (a user's own, measured on their cluster). Each figure has a value, a unit,
a kind (``measured`` by a bench script on ``machine``, ``derived`` from other figures, or ``assumed``), its
source, the command that measured it and the date. The bench scripts write theirs with ``--record``
(:func:`record_figure`). :func:`load_figures` reads them, refusing a file that lacks one of
:data:`REQUIRED` in one line; :func:`estimate_cost` turns them into an :class:`Estimate`;
:func:`estimate_lines` says it, each figure with its source.

The model (every rate per vCPU or per GPU; megapixels ``M = tiles x tile_px^2 / 1e6``):

- cubes: ``M x (composite + read) x (1 + cube_overhead)`` vCPU-s, plus ``orchestration_s_per_tile`` per tile;
- inference on GPUs: a GPU classifies ``min(gpu_px_per_s, threads x 1e6 / predict_host_cpu_s_per_mpx)``
  px/s: the device's rate, or the rate its host threads prepare pixels at (host-bound). The host's CPU is
  part of the GPU node and of its price. On CPUs (``gpus=0``): ``cpu_px_per_s_per_vcpu``;
- wall: the cube and inference stages overlap (a tile is predicted as soon as its cube exists), so the
  longer of the two; then the mosaic tail, which starts after the last tile: the zone mosaics side by side
  (the largest zone's megapixels x ``mosaic_zone_s_per_mpx``), then the national mosaic
  (``M x mosaic_national_s_per_mpx`` over ``mosaic_national_processes``);
- dollars: vCPU-hours and GPU-hours of work at on-demand and at spot prices, plus ``dollars_per_wall_h``
  for the scheduler and services over the wall time. The work-hours assume the workers are busy (or
  released) while they are paid for; :attr:`Estimate.idle_tail_dollars` is what a fixed-size cluster kept
  up through the mosaic tail adds at spot prices.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from cropmap.errors import ConfigError
from cropmap.settings import get_settings

__all__ = ["Figure", "FIGURES_FILE", "REQUIRED", "DEFAULT_VCPUS", "DEFAULT_GPUS", "Estimate", "figures_path",
           "load_figures", "record_figure", "machine_name", "estimate_cost", "estimate_lines", "estimate_table",
           "derived_gpu_px_per_s"]

#: The figures shipped with the package (pyproject's package-data), updated by ``bench/... --record``.
FIGURES_FILE = Path(__file__).with_name("cost_figures.json")
KINDS = ("measured", "derived", "assumed")
#: The cluster of ``deploy/overlays/arg`` (32 CPU workers x 4 vCPU, 4 GPU workers): the default wall time.
DEFAULT_VCPUS, DEFAULT_GPUS = 128, 4
#: Every key :func:`estimate_cost` reads.
REQUIRED = ("composite_vcpu_s_per_mpx", "read_vcpu_s_per_mpx", "cube_overhead", "orchestration_s_per_tile",
            "cpu_px_per_s_per_vcpu", "cropnet_gflop_per_px", "gpu_peak_tflops", "gpu_utilisation", "gpu_px_per_s",
            "predict_host_cpu_s_per_mpx", "predict_host_threads_per_gpu", "mosaic_zone_s_per_mpx",
            "mosaic_national_s_per_mpx", "mosaic_national_processes", "dollars_per_vcpu_h", "dollars_per_gpu_h",
            "spot_dollars_per_vcpu_h", "spot_dollars_per_gpu_h", "dollars_per_wall_h")


@dataclass(frozen=True)
class Figure:
    """One input of the cost model; ``kind`` is one of :data:`KINDS`; ``command``, ``date`` and ``machine``
    say how, when and where it was measured ("" for an assumption)."""

    value: float
    unit: str
    kind: str
    source: str
    command: str = ""
    date: str = ""
    machine: str = ""

    def provenance(self) -> str:
        """``"<source>[; `<command>`][, <date>][, <machine>]"``, one line."""
        how = "".join([f"; `{self.command}`" if self.command else "", f", {self.date}" if self.date else "",
                       f", {self.machine}" if self.machine else ""])
        return f"{self.source}{how}"

    def describe(self) -> str:
        """``"<kind>: <provenance>"``."""
        return f"{self.kind}: {self.provenance()}"


def figures_path() -> Path:
    """``$CROPMAP_COST_FIGURES`` when set, else :data:`FIGURES_FILE`."""
    return get_settings().cost_figures or FIGURES_FILE


def _read(path: Path) -> dict:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"cost figures {path} cannot be read ({type(err).__name__}: {err}); "
                          f"unset $CROPMAP_COST_FIGURES or copy {FIGURES_FILE}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("figures"), dict):
        raise ConfigError(f"cost figures {path} hold no 'figures' object; copy the layout of {FIGURES_FILE}")
    return doc


def load_figures(path: str | Path | None = None) -> dict[str, Figure]:
    """The figures of ``path`` (default :func:`figures_path`) by key. Raises :class:`ConfigError`, one line,
    when a key of :data:`REQUIRED` is missing or a figure is malformed."""
    path = Path(path) if path is not None else figures_path()
    raw = _read(path)["figures"]
    missing = [k for k in REQUIRED if k not in raw]
    if missing:
        raise ConfigError(f"cost figures {path} lack {', '.join(missing)}; measure them (bench/*.py --record) or "
                          f"copy them from {FIGURES_FILE}")
    figures = {}
    for key, entry in raw.items():
        try:
            figure = Figure(**entry)
            figure = replace(figure, value=float(figure.value))
        except (TypeError, ValueError) as err:
            raise ConfigError(f"cost figures {path}: {key} is malformed ({err}); it needs value, unit, kind, "
                              "source") from None
        if figure.kind not in KINDS:
            raise ConfigError(f"cost figures {path}: {key} has kind {figure.kind!r}, not one of {', '.join(KINDS)}")
        figures[key] = figure
    return figures


def machine_name() -> str:
    """This machine in words: the CPU's model name and its core count."""
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} cores"


def derived_gpu_px_per_s(figures: Mapping[str, Figure]) -> float:
    """CropNet's px/s per GPU from the device's peak, the share of it reached and the FLOPs per pixel."""
    return (figures["gpu_peak_tflops"].value * 1e12 * figures["gpu_utilisation"].value
            / (figures["cropnet_gflop_per_px"].value * 1e9))


def record_figure(key: str, value: float, *, unit: str, source: str, command: str, kind: str = "measured",
                  path: str | Path | None = None, date: str | None = None) -> Path:
    """Write one figure (this machine, today) into the figures file (default :func:`figures_path`); a
    ``derived`` ``gpu_px_per_s`` is derived again when one of its inputs changes. Returns the file."""
    path = Path(path) if path is not None else figures_path()
    doc = _read(path)
    doc["figures"][key] = asdict(Figure(float(value), unit, kind, source, command,
                                        date or dt.date.today().isoformat(), machine_name()))
    gpu = doc["figures"].get("gpu_px_per_s", {})
    if key in ("gpu_peak_tflops", "gpu_utilisation", "cropnet_gflop_per_px") and gpu.get("kind") == "derived":
        figures = {k: Figure(**v) for k, v in doc["figures"].items()}
        gpu["value"] = round(derived_gpu_px_per_s(figures))
    path.write_text(json.dumps(doc, indent=1) + "\n")
    return path


@dataclass(frozen=True)
class Estimate:
    """Work and cost of a plan. ``cpu_hours``: vCPU-h of the cubes, orchestration, CPU inference
    (``gpus=0``) and the mosaics; ``gpu_hours``: GPU-h of inference (0 for training); ``host_cpu_hours``:
    the GPU nodes' own host work (in the GPU price); ``wall_hours``: on ``vcpus`` and ``gpus``, the
    ``tail_hours`` of mosaics included; dollars on demand and at spot prices."""

    cpu_hours: float
    gpu_hours: float
    wall_hours: float
    dollars: float
    vcpus: int
    gpus: int
    figures: tuple[str, ...]  # the keys used
    spot_dollars: float = 0.0
    tail_hours: float = 0.0
    host_cpu_hours: float = 0.0
    gpu_px_per_s: float = 0.0  # the rate reached: the device's or its host's, the lower
    host_bound: bool = False
    idle_tail_dollars: float = 0.0


def estimate_cost(tiles: int, tile_px: int, *, inference: bool = True, vcpus: int = DEFAULT_VCPUS,
                  gpus: int = DEFAULT_GPUS, zone_tiles: Sequence[int] | None = None,
                  figures: Mapping[str, Figure] | None = None) -> Estimate:
    """The :class:`Estimate` of ``tiles`` tiles of ``tile_px`` x ``tile_px`` pixels (``zone_tiles``: tiles
    per UTM zone, for the zone mosaics; default one zone); inference on ``gpus`` GPUs, or on the ``vcpus``
    when ``gpus`` is 0; ``inference=False`` (training): cubes only, no mosaics."""
    figs = load_figures() if figures is None else figures
    f = {k: v.value for k, v in figs.items()}
    mpx = tiles * tile_px**2 / 1e6
    cpu_s = mpx * (f["composite_vcpu_s_per_mpx"] + f["read_vcpu_s_per_mpx"]) * (1 + f["cube_overhead"])
    cpu_s += tiles * f["orchestration_s_per_tile"]
    used = ["composite_vcpu_s_per_mpx", "read_vcpu_s_per_mpx", "cube_overhead", "orchestration_s_per_tile"]
    gpu_h = host_h = rate = tail_s = tail_cpu_s = 0.0
    host_bound = False
    if inference and gpus > 0:
        host_rate = f["predict_host_threads_per_gpu"] * 1e6 / f["predict_host_cpu_s_per_mpx"]
        rate, host_bound = min(f["gpu_px_per_s"], host_rate), host_rate < f["gpu_px_per_s"]
        gpu_h, host_h = mpx * 1e6 / rate / 3600, mpx * f["predict_host_cpu_s_per_mpx"] / 3600
        used += ["gpu_px_per_s", "cropnet_gflop_per_px", "gpu_peak_tflops", "gpu_utilisation",
                 "predict_host_cpu_s_per_mpx", "predict_host_threads_per_gpu"]
    elif inference:
        cpu_s += mpx * 1e6 / f["cpu_px_per_s_per_vcpu"]
        used.append("cpu_px_per_s_per_vcpu")
    wall_h = max(cpu_s / 3600 / max(vcpus, 1), gpu_h / gpus if gpus else 0.0)
    if inference:  # the mosaic tail: after the last tile, zones side by side, then the national mosaic
        largest = max(zone_tiles) if zone_tiles else tiles
        national_s = mpx * f["mosaic_national_s_per_mpx"]
        tail_s = largest * tile_px**2 / 1e6 * f["mosaic_zone_s_per_mpx"] + national_s / f["mosaic_national_processes"]
        tail_cpu_s = mpx * f["mosaic_zone_s_per_mpx"] + national_s
        used += ["mosaic_zone_s_per_mpx", "mosaic_national_s_per_mpx", "mosaic_national_processes"]
    cpu_h, tail_h = (cpu_s + tail_cpu_s) / 3600, tail_s / 3600
    wall_h += tail_h
    used += ["dollars_per_vcpu_h", "spot_dollars_per_vcpu_h", "dollars_per_wall_h"]
    if gpu_h:
        used += ["dollars_per_gpu_h", "spot_dollars_per_gpu_h"]
    dollars = cpu_h * f["dollars_per_vcpu_h"] + gpu_h * f["dollars_per_gpu_h"] + wall_h * f["dollars_per_wall_h"]
    spot = cpu_h * f["spot_dollars_per_vcpu_h"] + gpu_h * f["spot_dollars_per_gpu_h"] + wall_h * f["dollars_per_wall_h"]
    idle = tail_h * (vcpus * f["spot_dollars_per_vcpu_h"] + (gpus * f["spot_dollars_per_gpu_h"] if gpu_h else 0.0))
    return Estimate(cpu_h, gpu_h, wall_h, dollars, vcpus, gpus, tuple(used), spot, tail_h, host_h, rate,
                    host_bound, idle)


def estimate_lines(e: Estimate, purpose: str = "map", figures: Mapping[str, Figure] | None = None) -> list[str]:
    """The estimate as text: totals, the GPU rate and what bounds it, the tail, then each figure used with
    its value, unit, kind and source (``figures``: those it was computed from, default :func:`load_figures`)."""
    figs = load_figures() if figures is None else figures
    infer = (f", inference {e.gpu_hours:,.1f} GPU-h on {e.gpus} GPU(s)" if e.gpu_hours
             else ", inference on the CPUs" if purpose == "map" else ", training not estimated")
    lines = [f"estimate: {e.cpu_hours:,.0f} vCPU-h{infer}; ~{e.wall_hours:,.1f} h on {e.vcpus} vCPU"
             f"{f' + {e.gpus} GPU' if e.gpu_hours else ''}; ~${e.dollars:,.0f} on demand, ~${e.spot_dollars:,.0f} spot"]
    if e.gpu_hours:
        bound = "its host (predict_host_cpu_s_per_mpx)" if e.host_bound else "the device (gpu_px_per_s)"
        lines.append(f"  GPU rate: {e.gpu_px_per_s:,.0f} px/s per GPU, bound by {bound}; host work "
                     f"{e.host_cpu_hours:,.0f} CPU-h on the GPU nodes (in the GPU-hour price)")
    if e.tail_hours:
        lines.append(f"  mosaic tail (after the last tile): {e.tail_hours:,.1f} h; a cluster kept up through it "
                     f"adds ~${e.idle_tail_dollars:,.0f} spot")
    lines += [f"  {key} = {figs[key].value:,.6g} {figs[key].unit} ({figs[key].describe()})" for key in e.figures]
    return lines


def estimate_table(e: Estimate, figures: Mapping[str, Figure]) -> list[str]:
    """The estimate as two Markdown tables (results, then every input named with its kind and source): what
    docs/scaling.md's Argentina section shows (``bench/cost_table.py`` writes it; a test checks it)."""
    rows = [("vCPU-hours (cubes, orchestration, mosaics)", f"{e.cpu_hours:,.0f}"),
            ("GPU-hours (inference)", f"{e.gpu_hours:,.1f}"),
            ("px/s per GPU reached", f"{e.gpu_px_per_s:,.0f} ({'host' if e.host_bound else 'device'}-bound)"),
            ("host CPU-hours on the GPU nodes (in the GPU price)", f"{e.host_cpu_hours:,.0f}"),
            ("mosaic tail (after the last tile)", f"{e.tail_hours:,.1f} h"),
            (f"wall time on {e.vcpus} vCPU + {e.gpus} GPU, tail included", f"{e.wall_hours:,.1f} h"),
            ("dollars, on demand", f"${e.dollars:,.0f}"), ("dollars, spot", f"**${e.spot_dollars:,.0f}**"),
            ("a cluster kept up through the tail adds (spot)", f"${e.idle_tail_dollars:,.0f}")]
    lines = ["| result | value |", "|---|---:|", *(f"| {k} | {v} |" for k, v in rows), "",
             "| input | value | unit | kind | source |", "|---|---:|---|---|---|"]
    for key in e.figures:
        f = figures[key]
        lines.append(f"| `{key}` | {f.value:,.6g} | {f.unit} | {f.kind} | {f.provenance()} |")
    return lines
