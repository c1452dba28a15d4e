"""Model-free checks of the shipped step data against itself: what no cost model can fit.

The step-level targets of `calibration/REPORT.md` miss in two places (splitwise prefill, and
DistServe's vLLM formula carried across TP degrees). These checks show why without fitting
anything, so the report can tell a modelling failure from an inconsistency in the data:

- `splitwise_prefill_check`: a prefill step of b prompts of 512 tokens runs the same
  linear-layer tokens as one prompt of 512 b tokens and b times fewer attention pairs, and the
  same attention per token as a batch of any other size. In every cost model of DESIGN §4 (and
  in DistServe's and Vidur's) it can cost more than the one long prompt only by the
  per-sequence overhead (input preparation, sampling: well under a millisecond per prompt in
  vLLM), and its time per token cannot grow with b. Data that does either is something no
  such model follows.
- `distserve_tp_scaling`: DistServe's vLLM prefill formula spends `b` ms per prompt token; times
  the TP degree this is the GPU time per token of the whole group, which the linear layers make
  TP-independent: Vidur's measured linear layers (A100, TP 1-8) keep it within a few percent.
  What the formula adds from TP1 to TP2 and TP4 must then be communication, and Vidur's measured
  all-reduce sets how much that can be.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from simserve.calibration.datasets import (
    DISTSERVE_MODELS,
    AllReduceData,
    LinearData,
    StepData,
)
from simserve.formatting import fmt_number, fmt_percent, fmt_ratio

__all__ = [
    "ALLREDUCE_TOKENS",
    "BATCH_PROMPT_TOKENS",
    "ConsistencyReport",
    "DistServeTpScaling",
    "SplitwisePrefillCheck",
    "distserve_markdown",
    "distserve_tp_scaling",
    "linear_tp_ratios",
    "run_consistency_checks",
    "splitwise_markdown",
    "splitwise_prefill_check",
]

# splitwise-sim measured its batched prefills with prompts of 512 tokens.
BATCH_PROMPT_TOKENS = 512
# Prefill-sized linear layers: from here on a GEMM is compute-bound on A100/H100 at every TP
# in Vidur's data, so its time per token should not depend on how it is split.
PREFILL_MIN_TOKENS = 1024


@dataclass(frozen=True)
class SplitwisePrefillCheck:
    """splitwise-sim's batched prefills of one group (b prompts of 512 tokens) checked two ways.

    - `us_per_token[b]`: prefill time per token. The attention per token is the same at every
      b, so in a model affine in tokens (DESIGN §4, DistServe, Vidur) it can only fall as b
      grows (the fixed costs spread); `rise` is the largest ratio of a later value to the lowest
      one before it.
    - `vs_one_prompt[b]`: the batch over one prompt of the same 512 b tokens, which has b times
      the attention pairs; such a model prices the batch at most as high (`vs_one_prompt` <= 1
      up to the per-prompt overhead).

    Whatever such a model predicts for two rows whose measured times are r apart in the wrong
    direction, one of them is off by at least (r - 1) / (r + 1): `least_max_error`.
    """

    group: str
    us_per_token: dict[int, float]
    vs_one_prompt: dict[int, float]

    @property
    def rise(self) -> float:
        """Largest rise of the per-token time over its running minimum as b grows."""
        best, worst = np.inf, 1.0
        for value in self.us_per_token.values():
            worst = max(worst, value / best)
            best = min(best, value)
        return float(worst)

    @property
    def least_max_error(self) -> float:
        """A lower bound on the largest relative error of any such model on this group."""
        r = max(self.rise, *self.vs_one_prompt.values(), 1.0)
        return (r - 1.0) / (r + 1.0)


def splitwise_prefill_check(group: StepData) -> SplitwisePrefillCheck:
    """The batched-prefill checks of one splitwise group (see SplitwisePrefillCheck)."""
    s = group.shapes
    prefill = (s["num_prefill_tokens"] > 0) & (s["num_decode_tokens"] == 0)
    rows = [(int(k), int(n), float(t)) for n, k, t, p in zip(
        s["num_prefill_tokens"], s["num_prefill_seqs"], group.time_ms, prefill, strict=True) if p]
    single = {n: t for k, n, t in rows if k == 1}
    batched = sorted((k, n, t) for k, n, t in rows if n == k * BATCH_PROMPT_TOKENS)
    return SplitwisePrefillCheck(
        group.key,
        {k: 1e3 * t / n for k, n, t in batched},
        {k: t / single[n] for k, n, t in batched if k > 1 and n in single},
    )


def linear_tp_ratios(groups: Sequence[LinearData], gpu: str) -> dict[int, tuple[float, float]]:
    """Vidur's linear layers on `gpu` at prefill sizes: time x tp over TP1's time, averaged over
    the token counts >= PREFILL_MIN_TOKENS of each model; (lowest, highest) over the models,
    per TP degree."""
    per_tp: dict[int, list[float]] = {}
    for g in groups:
        if g.gpu != gpu:
            continue
        base = {int(n): t for n, t, tp in zip(g.num_tokens, g.time_ms, g.tp, strict=True)
                if tp == 1 and n >= PREFILL_MIN_TOKENS}
        ratios: dict[int, list[float]] = {}
        for n, t, tp in zip(g.num_tokens, g.time_ms, g.tp, strict=True):
            if tp > 1 and int(n) in base:
                ratios.setdefault(int(tp), []).append(t * tp / base[int(n)])
        for tp, values in ratios.items():
            per_tp.setdefault(tp, []).append(float(np.mean(values)))
    return {tp: (min(v), max(v)) for tp, v in sorted(per_tp.items())}


@dataclass(frozen=True)
class DistServeTpScaling:
    """DistServe's vLLM prefill cost per token at each TP degree of one model."""

    model: str
    ms_per_token: dict[int, float]  # the formula's b coefficient

    def group_ms_per_token(self, tp: int) -> float:
        """GPU-milliseconds per token over the whole TP group: b x tp."""
        return self.ms_per_token[tp] * tp

    def excess_ms_per_token(self, tp: int) -> float:
        """What the formula spends per token beyond TP1's linear work split tp ways."""
        return self.ms_per_token[tp] - self.ms_per_token[1] / tp


def distserve_tp_scaling(path: str | Path, model: str = "opt-13b") -> DistServeTpScaling:
    """The per-token prefill coefficient of `model` at every TP degree of a DistServe JSON.

    Read from the file the loader (`datasets.load_distserve`) already validated.
    """
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    hf_name = next(k for k, v in DISTSERVE_MODELS.items() if v == model)
    per_tp = data[hf_name]
    return DistServeTpScaling(model, {int(tp): float(p["prefill"][1])
                                      for tp, p in sorted(per_tp.items(), key=lambda x: int(x[0]))})


# NOTE: the step size at which the per-token prefill cost is read: vLLM v0's default
# max_num_batched_tokens, the largest prefill step of the DistServe vLLM grid.
ALLREDUCE_TOKENS = 2048


@dataclass(frozen=True)
class ConsistencyReport:
    """The model-free checks of the shipped step data (see the module docstring)."""

    splitwise: list[SplitwisePrefillCheck]
    distserve: DistServeTpScaling
    # Vidur's linear-layer time x TP over TP1's: (lowest, highest) over its models, per TP.
    linear_tp: dict[int, tuple[float, float]]
    # Measured all-reduce time per prefill token (ms): 2 per layer, ALLREDUCE_TOKENS per step.
    allreduce_ms_per_token: dict[int, float]


def run_consistency_checks(
    splitwise: Sequence[StepData], vidur: Sequence[LinearData], distserve: Sequence[StepData],
    distserve_path: str | Path, allreduce: Sequence[AllReduceData],
) -> ConsistencyReport:
    """Every check, on the shipped data (DistServe's model: OPT-13B on A100)."""
    scaling = distserve_tp_scaling(distserve_path)
    target = next(g for g in distserve if g.model == scaling.model)
    table = next(a for a in allreduce if a.gpu == target.gpu)
    message_bytes = ALLREDUCE_TOKENS * target.arch.hidden_size * target.arch.dtype_bytes
    per_token = {tp: 2 * target.arch.num_layers * table.interpolate_ms(tp, message_bytes)
                 / ALLREDUCE_TOKENS for tp in scaling.ms_per_token if tp > 1}
    return ConsistencyReport([splitwise_prefill_check(g) for g in splitwise], scaling,
                             linear_tp_ratios(vidur, target.gpu), per_token)


def splitwise_markdown(rep: ConsistencyReport, held_back: dict[str, str]) -> list[str]:
    """§1's table of splitwise's batched prefills; `held_back` maps group -> its error cell."""
    batches = sorted({b for c in rep.splitwise for b in c.us_per_token})
    lines = [
        "Why splitwise's prefill misses (`simserve/calibration/consistency.py`, no fitting): a "
        f"batch of b prompts of {BATCH_PROMPT_TOKENS} tokens has the same attention per token at "
        "every b, so in any model affine in tokens (simserve's, DistServe's, Vidur's) its time "
        "per token can only fall as b grows; and it has b times fewer attention pairs than one "
        f"prompt of {BATCH_PROMPT_TOKENS} b tokens, so it can cost at most as much (up to a "
        "per-prompt overhead well under a millisecond in vLLM). Where the data goes the other "
        "way by a ratio r, one of the two rows is missed by at least (r - 1) / (r + 1) whatever "
        "the coefficients.",
        "",
        "| group | held-back prefill MAPE / max % | time per token (us) at b = "
        + ", ".join(str(b) for b in batches)
        + " | largest rise over a smaller b | batch vs one prompt, worst | least possible max "
        "error |",
        "|---|---|---|---|---|---|",
    ]
    for c in rep.splitwise:
        per_token = ", ".join(fmt_number(c.us_per_token[b]) if b in c.us_per_token else "–"
                              for b in batches)
        worst = max(c.vs_one_prompt.items(), key=lambda kv: kv[1])
        lines.append(f"| {c.group} | {held_back.get(c.group, '–')} | {per_token} | "
                     f"{fmt_ratio(c.rise)} | {fmt_ratio(worst[1])} (b={worst[0]}) | "
                     f"{fmt_percent(c.least_max_error)} |")
    lines.append("")
    return lines


def _range(bounds: tuple[float, float] | None, tp: int) -> str:
    if tp == 1:
        return "1.00"
    return "–" if bounds is None else f"{fmt_number(bounds[0])}-{fmt_number(bounds[1])}"


def distserve_markdown(rep: ConsistencyReport, missed_tps: Sequence[int]) -> list[str]:
    """§2's paragraph on how DistServe's formula scales with TP (`missed_tps`: the held-out TP
    degrees of its model that miss the target)."""
    d = rep.distserve
    why = (f"Why the {d.model} rows miss at " + " and ".join(f"TP{t}" for t in missed_tps)
           if missed_tps else f"How the {d.model} formula scales with TP")
    lines = [
        f"{why}: DistServe's vLLM prefill formula for "
        f"{d.model} spends b ms per prompt token. Times the TP degree that is the GPU time per "
        "token of the whole group, which the linear layers leave unchanged: Vidur's measured "
        f"linear layers on the same GPU (steps of >= {PREFILL_MIN_TOKENS} tokens; range over "
        "its models) keep it at TP1's. "
        "What the formula adds beyond TP1's work split tp ways must then be communication; "
        f"Vidur's measured all-reduce (two per layer, {ALLREDUCE_TOKENS}-token steps) is the "
        "last column.",
        "",
        "| TP | b (ms per token) | b x TP | vs TP1 | Vidur's linear layers x TP vs TP1 | added "
        "per token beyond TP1 / TP (us) | measured all-reduce per token (us) |",
        "|---|---|---|---|---|---|---|",
    ]
    for tp in d.ms_per_token:
        ar = rep.allreduce_ms_per_token.get(tp)
        lines.append(
            f"| {tp} | {fmt_number(d.ms_per_token[tp])} | {fmt_number(d.group_ms_per_token(tp))} | "
            f"{fmt_number(d.group_ms_per_token(tp) / d.group_ms_per_token(1))} | "
            f"{_range(rep.linear_tp.get(tp), tp)} | "
            f"{fmt_number(1e3 * d.excess_ms_per_token(tp))} | "
            f"{'–' if ar is None else fmt_number(1e3 * ar)} |")
    multi = [tp for tp in d.ms_per_token if tp > 1 and tp in rep.allreduce_ms_per_token]
    shares = [rep.allreduce_ms_per_token[tp] / d.excess_ms_per_token(tp) for tp in multi]
    excess = [d.excess_ms_per_token(tp) for tp in multi]
    trend = ("falls" if all(b < a for a, b in itertools.pairwise(excess)) else "does not "
             "grow in step") if len(excess) > 1 else "is one number"
    lines += [
        "",
        f"The formula's extra time per token {trend} from TP{multi[0]} to TP{multi[-1]}, while "
        f"the measured all-reduce grows with TP and accounts for {fmt_number(100 * min(shares))}-"
        f"{fmt_percent(max(shares))} of it: no term that grows with the TP degree (an all-reduce, "
        "a per-GPU launch cost) or is independent of it (GEMM efficiency, as Vidur measures) "
        "reproduces every TP degree together, so a fit on some of them misses the others by "
        "the difference.",
    ]
    return lines
