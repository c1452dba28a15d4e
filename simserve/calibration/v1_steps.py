"""What the real V1 runs' engine steps took beyond the measured kernels, read tick by tick.

The server logged, every second, the prompt and generated tokens of that second and the
requests running (`timeseries.csv`). Past saturation the engine steps back to back, so one
second holds S steps; in a second with no prefill every running request decodes once per step,
so S = generated tokens / running requests, and the mean step is 1 s / S. The requests' own
timings (`requests.jsonl`) give who was decoding and at what context, so each such step is
priced by the kernel model (GPU time only) and the difference is what the engine added.

Which extra it is shows in how it grows. Per second, 1 s = S x (kernel step + extra); the
extra is fitted four ways by least squares over the seconds: flat per step; flat + per token
(it grows with the step's tokens); flat + a multiple of the kernel step (the card's clocks
slower under sustained load would stretch every kernel alike); flat + a multiple of the step's
all-reduces as the tables price them (the collectives took longer than the tables measured).
Seconds that also prefill are fitted apart: their step count (generated tokens over decoding
requests) is coarser, and their steps are large.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from simserve.calibration.served_v1 import V1_RUNS, V1Run, v1_runs
from simserve.catalog import load_catalog
from simserve.config import load_scenario
from simserve.costmodel.base import BatchShape
from simserve.costmodel.kernels import KernelCostModel
from simserve.costmodel.select import kernel_cost_model

__all__ = [
    "BATCH_BINS",
    "EXTRA_FORMS",
    "PCIE5_X16_GBPS",
    "ExtraFit",
    "RunSteps",
    "TickStep",
    "allreduce_rate",
    "by_batch",
    "fit_extra",
    "run_steps",
    "v1_step_evidence",
]

# The extra per step as a linear form in (1, tokens, kernel step, all-reduces), by name.
EXTRA_FORMS: dict[str, tuple[str, ...]] = {
    "flat": ("per_step_ms",),
    "flat + per token": ("per_step_ms", "per_token_ms"),
    "flat + x kernel step": ("per_step_ms", "x_kernel"),
    "flat + x all-reduces": ("per_step_ms", "x_allreduce"),
}
# Seconds that prefill and have fewer decoding requests give too coarse a step count.
_MIN_DECODING_MIXED = 8
_OFFSETS_S = np.arange(-3.0, 3.0, 0.02)
BATCH_BINS: tuple[tuple[int, int], ...] = ((1, 4), (5, 16), (17, 48), (49, 96), (97, 128))
# NOTE: PCIe 5.0: 32 GT/s per lane, 128b/130b encoding; one direction of an x16 link.
PCIE5_X16_GBPS = 32.0 * 16 * 128 / 130 / 8


@dataclass(frozen=True)
class TickStep:
    """The mean engine step of one logged second."""

    time_s: float
    prefill_tokens: float  # per step
    decoding: float  # requests decoding (one token each per step)
    mean_context: float  # tokens, of the decoding requests
    steps: float  # steps in the second
    kernel_ms: float  # the kernel model's GPU time of the mean step
    allreduce_ms: float  # of which all-reduces

    @property
    def step_ms(self) -> float:
        return 1e3 / self.steps

    @property
    def tokens(self) -> float:
        return self.prefill_tokens + self.decoding

    @property
    def extra_ms(self) -> float:
        return self.step_ms - self.kernel_ms


@dataclass(frozen=True)
class ExtraFit:
    """One form of the extra fitted over seconds: coefficients and relative RMS error of the
    seconds' summed step time."""

    form: str
    coefficients: dict[str, float]
    rms_pct: float


@dataclass(frozen=True)
class RunSteps:
    """The step-level reading of one V1 run."""

    name: str
    tp: int
    clock_offset_s: float
    decode: list[TickStep]
    mixed: list[TickStep]


def _timeseries(folder: Path) -> dict[str, np.ndarray]:
    with (folder / "timeseries.csv").open(encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    return {k: np.array([float(r[k]) for r in rows]) for k in
            ("t", "prompt_throughput", "gen_throughput", "running")}


def _running(run: V1Run, t: np.ndarray) -> np.ndarray:
    return ((run.scheduled_s[:, None] <= t[None]) & (run.finished_s[:, None] > t[None])).sum(0)


def clock_offset(run: V1Run, series: dict[str, np.ndarray]) -> float:
    """Seconds to add to the log's ticks to put them on the requests' clock: the offset at
    which the requests' running count best matches the logged one."""
    errs = [float(np.sum((_running(run, series["t"] + off) - series["running"]) ** 2))
            for off in _OFFSETS_S]
    return float(_OFFSETS_S[int(np.argmin(errs))])


def allreduce_ms(km: KernelCostModel, tokens: int, rows: int) -> float:
    """The all-reduces the kernel model prices in a step of `tokens` tokens sampling `rows`:
    two per layer and the embedding's at tokens x hidden, and the logits' gather."""
    # NOTE: the same count as KernelCostModel._per_token_us and _lm_head_us.
    if km.tp == 1 or tokens == 0:
        return 0.0
    graph = tokens <= km._capture_max
    mode = "graph" if graph else "eager"
    if graph:  # padded to the captured size, as the step itself is
        tokens = min(s for s in km._graph_sizes if s >= tokens)
    layers = (2 * km.model.num_layers + 1) * float(
        km.ops.allreduce(mode, km.tp, tokens * km.model.hidden_size))
    logits = float(km.ops.allreduce("eager", km.tp, rows * (km.model.vocab_size // km.tp)))
    return (layers + logits) / 1e3


def _kernel_model(name: str) -> KernelCostModel:
    from simserve.calibration.engine_loop_fit import V1_SCENARIOS_DIR

    sc = load_scenario(V1_SCENARIOS_DIR / V1_RUNS[name])
    catalog = load_catalog()
    return kernel_cost_model(sc.cost_model, catalog.gpu(sc.hardware), catalog.model(sc.model),
                             sc.tp, sc.engine, with_loop=False)


def run_steps(run: V1Run) -> RunSteps:
    """Every logged second of `run` with enough requests decoding, priced step by step."""
    km = _kernel_model(run.name)
    series = _timeseries(run.folder)
    offset = clock_offset(run, series)
    out = run.output_len
    tpot_s = np.where(out > 1, (run.finished_s - run.first_token_s) / np.maximum(out - 1, 1),
                      np.inf)
    decode, mixed = [], []
    t, prompt, gen, running = (series[k] for k in
                               ("t", "prompt_throughput", "gen_throughput", "running"))
    for k in range(1, t.size):
        if running[k] < 1 or running[k - 1] < 1:
            continue  # the engine idled part of the second
        mid = t[k] - 0.5 + offset
        dec = (run.first_token_s <= mid) & (run.finished_s > mid)
        produced = np.clip((mid - run.first_token_s[dec]) / tpot_s[dec], 0, out[dec])
        context = float(np.mean(run.prompt_len[dec] + produced)) if dec.any() else 0.0
        # NOTE: with no prefill in the second, every running request decodes: the logged
        # count (averaged over the second's two ends) is exact; otherwise the requests'
        # timings say which decode.
        decoding = 0.5 * (running[k] + running[k - 1]) if prompt[k] == 0 else float(dec.sum())
        if decoding < 1 or (prompt[k] > 0 and decoding < _MIN_DECODING_MIXED):
            continue
        steps = gen[k] / decoding
        chunk = round(float(prompt[k] / steps))
        seqs = round(float(decoding))
        shape = BatchShape(num_prefill_tokens=chunk, num_prefill_seqs=int(chunk > 0),
                           prefill_attn_pairs=chunk * chunk / 2.0, prefill_kv_tokens=chunk,
                           num_decode_seqs=seqs, num_decode_tokens=seqs,
                           decode_kv_tokens=round(context * seqs))
        tick = TickStep(float(t[k]), float(chunk), decoding, context, float(steps),
                        km.gpu_time_us(shape) / 1e3,
                        allreduce_ms(km, chunk + seqs, seqs + int(chunk > 0)))
        (decode if prompt[k] == 0 else mixed).append(tick)
    return RunSteps(run.name, km.tp, offset, decode, mixed)


def fit_extra(ticks: list[TickStep], form: str) -> ExtraFit:
    """Least-squares extra per step of `form` (EXTRA_FORMS) over `ticks`: each second's steps
    x (kernel step + extra) = 1 s."""
    names = EXTRA_FORMS[form]
    column = {"per_step_ms": lambda x: x.steps, "per_token_ms": lambda x: x.steps * x.tokens,
              "x_kernel": lambda x: x.steps * x.kernel_ms,
              "x_allreduce": lambda x: x.steps * x.allreduce_ms}
    a = np.array([[column[n](x) for n in names] for x in ticks])
    base = np.array([x.steps * x.kernel_ms for x in ticks])
    coef, *_ = np.linalg.lstsq(a, 1e3 - base, rcond=None)
    pred = base + a @ coef
    rms = float(np.sqrt(np.mean(((pred - 1e3) / 1e3) ** 2)) * 100)
    return ExtraFit(form, {n: float(c) for n, c in zip(names, coef, strict=True)}, rms)


def by_batch(ticks: list[TickStep]) -> list[tuple[tuple[int, int], list[TickStep]]]:
    """`ticks` grouped by their decoding requests (BATCH_BINS; empty groups left out)."""
    out = []
    for lo, hi in BATCH_BINS:
        group = [x for x in ticks if lo - 0.5 <= x.decoding < hi + 0.5]
        if group:
            out.append(((lo, hi), group))
    return out


def allreduce_rate(name: str, tokens: int, multiple: float) -> dict[str, float]:
    """One layer all-reduce of a `tokens`-token step of run `name` (tokens x hidden, bf16):
    its message (MB), the table's time (us), the bandwidth (GB/s of message) at the table's
    time and at `multiple` x it, and how many a step runs (two per layer and the
    embedding's)."""
    km = _kernel_model(name)
    table_us = float(km.ops.allreduce("graph", km.tp, tokens * km.model.hidden_size))
    message_bytes = 2.0 * tokens * km.model.hidden_size
    return {"message_mb": message_bytes / 1e6, "table_us": table_us,
            "table_gbps": message_bytes / table_us / 1e3,
            "implied_gbps": message_bytes / (multiple * table_us) / 1e3,
            "per_step": 2.0 * km.model.num_layers + 1}


def v1_step_evidence() -> list[RunSteps]:
    """The step-level reading of every shipped V1 run."""
    return [run_steps(run) for run in v1_runs()]
