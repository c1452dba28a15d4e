"""The anti-pattern catalog (DESIGN §7): one `Entry` per way an evaluation can mislead.

Each entry runs one base scenario (under `scenarios/antipatterns/`) under an unfair and a fair
setup. The texts say what each evaluator does and what the catalog expects; the verdicts come
from the runs (see `model.conclude`), and the report says when a run does not show what the
catalog expects. Adding an entry is adding one `Entry` to `CATALOG`.

Rates are fractions of the reference system's measured saturation throughput (an offline run,
see `runner`), so an entry keeps its meaning at every size and on any model or GPU.
"""

from __future__ import annotations

from simserve.antipatterns.model import (
    METRICS,
    Capacity,
    Entry,
    Point,
    Setup,
    Size,
    Sweep,
    capacity_metric,
)
from simserve.errors import InputError
from simserve.resources import scenarios_dir

__all__ = ["CATALOG", "SCENARIOS_DIR", "SIZES", "get_entries"]

SCENARIOS_DIR = scenarios_dir("antipatterns")
CONV = "llama3-8b-h100-conv.yaml"
ARXIV = "llama3-8b-h100-arxiv.yaml"

M = METRICS

# NOTE: vLLM v0's prefill-first scheduler runs whole prompts, so its token budget must hold the
# longest prompt: vLLM sets max_num_batched_tokens = max(max_model_len, 2048) = 8192 for
# Llama-3-8B when chunked prefill is off. vLLM v1 chunks with a 2048-token budget (config default).
PREFILL_FIRST = ("engine.policy=prefill_first", "engine.max_num_batched_tokens=8192")
CHUNKED = ("engine.policy=chunked_prefill", "engine.max_num_batched_tokens=2048")
POLICY_PAIR = {"prefill_first": PREFILL_FIRST, "chunked_prefill": CHUNKED}
# NOTE: vLLM v0 set max_num_batched_tokens = 512 when chunked prefill was enabled
# (SchedulerConfig: "balance between ITL and TTFT ... not optimized for throughput"): small
# chunks keep each step, and so each token gap, short.
CHUNKED_512 = ("engine.policy=chunked_prefill", "engine.max_num_batched_tokens=512")
FIXED_512_128 = (
    "workload.lengths.dist=fixed",
    "workload.lengths.prompt_len=512",
    "workload.lengths.output_len=128",
)
# NOTE: the case study's draft pair (scenarios/casestudy/specdec-llama3-8b-h100.yaml): a
# Llama-3.2-1B draft, k=4, geometric acceptance alpha=0.7 (2.77 tokens per verify step).
SPECULATIVE = (
    "engine.speculative.method=draft",
    "engine.speculative.draft_model=llama-3.2-1b",
    "engine.speculative.num_speculative_tokens=4",
    "engine.speculative.acceptance.model=geometric",
    "engine.speculative.acceptance.alpha=0.7",
)
# NOTE: DistServe's own placement for OPT-13B (c21d11: one prefill instance at TP2, one decode
# instance at TP1, KV caches over NVLink; scenarios/validation/opt13b-a100-distserve.yaml), here
# against three co-located chunked-prefill replicas on as many GPUs. The prefill instance batches
# whole prompts (prefill-first, vLLM v0's 8192-token budget); the decode instance keeps the
# engine's settings, as DistServe's decode instances are plain continuous-batching engines.
COLOCATED_3 = (*CHUNKED, "cluster.replicas=3")
DISAGGREGATED_2P1D = (
    *CHUNKED,
    "cluster.mode=disaggregated",
    "cluster.prefill.instances=1",
    "cluster.prefill.tp=2",
    "cluster.prefill.policy=prefill_first",
    "cluster.prefill.max_num_batched_tokens=8192",
    "cluster.decode.instances=1",
    "cluster.decode.tp=1",
)
# NOTE: DistServe's chatbot SLOs for a 13B model (Zhong et al., OSDI 2024, Table 1): TTFT 0.25 s
# and TPOT 0.1 s; its goodput is the highest rate at which >= 90% of requests meet both.
DISTSERVE_CHATBOT_SLO = ("metrics.slo.ttft_ms=250", "metrics.slo.tpot_ms=100")
GOODPUT = "attainment:0.9"
SARATHI = "sarathi"  # P99 TBT <= 200 ms and median scheduling delay <= 2 s (Sarathi-Serve)
INTERACTIVE = "p99_ttft_ms<=1000,p99_tbt_ms<=200"


CATALOG: tuple[Entry, ...] = (
    # ------------------------------------------------------------------ baseline fairness
    Entry(
        id="BF1",
        dimension="baseline fairness",
        title="The baseline runs in a slower engine",
        description="A scheduling policy is credited with a gain that partly comes from the "
        "baseline's slower engine (per-step overhead, e.g. no CUDA graphs).",
        base=CONV,
        systems=POLICY_PAIR,
        candidate="chunked_prefill",
        baseline="prefill_first",
        unfair=Setup(
            description="The baseline (prefill_first) runs in an engine with 5 ms more per-step "
            "overhead than the candidate's (e.g. an older release without CUDA graphs), and "
            "the mean E2E latency of both is compared at half the saturation load.",
            # NOTE: 5 ms per step is an assumed eager-mode launch overhead of a 32-layer decoder
            # step (vLLM enforce_eager=True vs CUDA graphs); a parameter, not a measurement. It
            # is added outside the forward pass (serving_step_ms), so it applies to any cost
            # model.
            system_overrides={"prefill_first": ("cost_model.serving_step_ms=5.0",)},
            measure=Point(load=0.5),
            verdict=M["mean_e2el_ms"],
            metrics=(M["mean_tpot_ms"], M["p99_tbt_ms"]),
        ),
        fair=Setup(
            description="Both policies run on the same cost model (the same engine, same "
            "per-step overhead), at the same rate.",
            measure=Point(load=0.5),
            verdict=M["mean_e2el_ms"],
            metrics=(M["mean_tpot_ms"], M["p99_tbt_ms"]),
        ),
        expected=("shrank", "flipped"),
        expected_text="the claimed gain of chunked prefill shrinks to its algorithmic part",
        checklist=("C1",),
    ),
    Entry(
        id="BF2",
        dimension="baseline fairness",
        title="The baseline runs at default knobs",
        description="The proposed system is tuned for the SLO while the baseline keeps a "
        "default that was chosen for another goal.",
        base=ARXIV,
        systems={
            "prefill_first": PREFILL_FIRST,
            "chunked_prefill": CHUNKED_512,
        },
        candidate="prefill_first",
        baseline="chunked_prefill",
        unfair=Setup(
            description="A prefill-prioritising scheduler (prefill_first, token budget tuned "
            "over 8192/4096) is compared with chunked prefill at vLLM v0's default 512-token "
            "budget, by capacity under a P99 TTFT <= 1 s SLO on long prompts.",
            measure=Capacity("p99_ttft_ms<=1000"),
            verdict=capacity_metric("p99_ttft_ms<=1000"),
            tuning={
                "prefill_first": (("engine.max_num_batched_tokens=8192",),
                                  ("engine.max_num_batched_tokens=4096",)),
            },
        ),
        fair=Setup(
            description="Both systems are tuned for the same SLO: chunked prefill's token "
            "budget is chosen from 512/2048/4096, prefill_first's from 8192/4096.",
            measure=Capacity("p99_ttft_ms<=1000"),
            verdict=capacity_metric("p99_ttft_ms<=1000"),
            tuning={
                "prefill_first": (("engine.max_num_batched_tokens=8192",),
                                  ("engine.max_num_batched_tokens=4096",)),
                "chunked_prefill": (("engine.max_num_batched_tokens=512",),
                                    ("engine.max_num_batched_tokens=2048",),
                                    ("engine.max_num_batched_tokens=4096",)),
            },
        ),
        expected=("shrank", "flipped"),
        expected_text="the gap shrinks or reverses once the baseline is tuned too",
        checklist=("C2",),
    ),
    Entry(
        id="BF3",
        dimension="baseline fairness",
        title="Unequal resources, no per-GPU normalisation",
        description="The proposed system gets more hardware than the baseline and the "
        "comparison reports totals instead of per-GPU numbers.",
        base=CONV,
        systems=POLICY_PAIR,
        candidate="chunked_prefill",
        baseline="prefill_first",
        unfair=Setup(
            description="chunked_prefill is served by 2 GPUs (2 replicas, round robin), "
            "prefill_first by 1; the total capacity under the Sarathi SLO is compared.",
            system_overrides={"chunked_prefill": ("cluster.replicas=2",)},
            measure=Capacity(SARATHI),
            verdict=capacity_metric(SARATHI),
        ),
        fair=Setup(
            description="Both run on 1 GPU (equal KV memory, batch cap and compute).",
            measure=Capacity(SARATHI),
            verdict=capacity_metric(SARATHI),
        ),
        expected=("shrank", "flipped"),
        expected_text="the gap shrinks once resources are equal",
        checklist=("C3",),
    ),
    # ------------------------------------------------------------------ evaluation setup
    Entry(
        id="ES1",
        dimension="evaluation setup",
        title="Fixed short lengths instead of a real trace",
        description="Fixed 512-in/128-out requests hide what a scheduler does with long, "
        "heterogeneous prompts.",
        base=ARXIV,
        systems=POLICY_PAIR,
        candidate="chunked_prefill",
        baseline="prefill_first",
        unfair=Setup(
            description="Every request has 512 prompt and 128 output tokens; capacity under "
            "the Sarathi SLO (P99 TBT <= 200 ms, median scheduling delay <= 2 s).",
            overrides=FIXED_512_128,
            measure=Capacity(SARATHI),
            verdict=capacity_metric(SARATHI),
        ),
        fair=Setup(
            description="Prompt and output lengths sampled from the arXiv-summarization trace "
            "(median prompt 2730 tokens); same SLO.",
            measure=Capacity(SARATHI),
            verdict=capacity_metric(SARATHI),
        ),
        expected=("grew", "flipped"),
        expected_text="the two policies look alike on fixed lengths; chunked prefill's "
        "capacity under a TBT SLO is clearly higher on the real trace",
        checklist=("C4", "C5"),
    ),
    Entry(
        id="ES2",
        dimension="evaluation setup",
        title="One low load instead of a sweep past the knee",
        description="A single load point (a low rate, offline or closed loop) shows a system in "
        "one regime only; which system wins depends on the load (here: speculative decoding).",
        base=CONV,
        systems={"no_spec": CHUNKED, "spec": (*CHUNKED, *SPECULATIVE)},
        candidate="spec",
        baseline="no_spec",
        unfair=Setup(
            description="Mean E2E latency with and without speculation at one low rate "
            "(0.05 x saturation), as a latency benchmark at batch ~1 would show.",
            measure=Point(load=0.05),
            verdict=M["mean_e2el_ms"],
            metrics=(M["mean_tpot_ms"],),
        ),
        fair=Setup(
            description="An open-loop Poisson sweep from 0.05 to 0.95 x saturation; the "
            "verdict is read where speculation's advantage is smallest among the rates below "
            "both systems' saturation (speculation saturates earlier).",
            measure=Sweep(
                points=(Point(0.05), Point(0.35), Point(0.75), Point(0.95)),
                axis="load",
                summary="worst",
            ),
            verdict=M["mean_e2el_ms"],
            metrics=(M["mean_tpot_ms"],),
        ),
        expected=("shrank", "flipped"),
        expected_text="single points mislead: speculation's gain at low load shrinks or "
        "reverses as the load approaches the knee",
        checklist=("C6",),
    ),
    Entry(
        id="ES3",
        dimension="evaluation setup",
        title="Past saturation, no warm-up, few requests",
        description="Past saturation the queue never drains, so latency tails measure how "
        "long the benchmark ran, not the system.",
        base=CONV,
        systems=POLICY_PAIR,
        candidate="chunked_prefill",
        baseline="prefill_first",
        unfair=Setup(
            description="P99 TTFT at 1.3 x saturation with every request measured (no "
            "warm-up); the verdict is read from the shortest run (0.25x the base number of "
            "requests), the sweep up to 2x shows what the run length does.",
            measure=Sweep(
                points=tuple(Point(1.3, requests=r, warmup=False) for r in (0.25, 0.5, 1, 2)),
                axis="requests",
                summary="first",
                trend="increasing",
            ),
            verdict=M["p99_ttft_ms"],
        ),
        fair=Setup(
            description="P99 TTFT at 0.6 x saturation (steady state), warm-up and cool-down "
            "excluded, for the same request counts; the verdict is read from the longest run.",
            measure=Sweep(
                points=tuple(Point(0.6, requests=r) for r in (0.25, 0.5, 1, 2)),
                axis="requests",
                trend="flat",
            ),
            verdict=M["p99_ttft_ms"],
        ),
        expected=("shrank",),
        expected_text="past saturation P99 TTFT grows with the number of requests simulated "
        "(not a system property); in steady state it does not: the dependence on the run "
        "length shrinks from the unfair to the fair setup",
        outcome_on="trend",
        checklist=("C7", "C8"),
    ),
    Entry(
        id="ES4",
        dimension="evaluation setup",
        title="Poisson arrivals instead of bursty ones",
        description="Real traffic is burstier than Poisson; bursts queue several prompts at "
        "once, which raises tails and lowers the load a system can take.",
        base=CONV,
        systems=POLICY_PAIR,
        candidate="chunked_prefill",
        baseline="prefill_first",
        unfair=Setup(
            description="Poisson arrivals (gap cv = 1); capacity under an interactive SLO, "
            "P99 TTFT <= 1 s and P99 TBT <= 200 ms.",
            # NOTE: 2x the base request count per probe in both setups: a bursty process needs
            # longer runs than a Poisson one before its tail percentiles settle.
            measure=Capacity(INTERACTIVE, requests=2.0),
            verdict=capacity_metric(INTERACTIVE),
        ),
        fair=Setup(
            description="Gamma arrivals with gap cv = 3 (burstiness 1/9), as bursty as "
            "production traces; same SLO.",
            # NOTE: the Azure code trace's gaps have cv ~13 and the conversation trace's ~1.1
            # (calibration/data/traces); cv = 3 sits between them.
            overrides=("workload.arrival.process=gamma", "workload.arrival.burstiness=0.1111"),
            measure=Capacity(INTERACTIVE, requests=2.0),
            verdict=capacity_metric(INTERACTIVE),
        ),
        expected=("flipped", "shrank", "grew", "unchanged"),
        expected_text="tails and capacity drop under bursts: every system's capacity is lower "
        "than under Poisson arrivals (the ranking may or may not change)",
        expected_change="worse",
        checklist=("C6",),
    ),
    # ------------------------------------------------------------------ metric design
    Entry(
        id="MD1",
        dimension="metric design",
        title="Normalized latency and mean TPOT hide stalls",
        description="Per-request averages spread a long prefill stall over hundreds of tokens, "
        "so they barely move when users see the stream freeze.",
        base=ARXIV,
        systems=POLICY_PAIR,
        candidate="chunked_prefill",
        baseline="prefill_first",
        unfair=Setup(
            description="Mean normalized latency (E2E latency / output tokens), the metric of "
            "Orca and vLLM papers, near capacity (0.4 x saturation) on long prompts.",
            measure=Point(load=0.4),
            verdict=M["mean_normalized_latency_ms"],
            metrics=(M["mean_tpot_ms"],),
        ),
        fair=Setup(
            description="Token-level tails from the same runs: P99 TBT (per token), the P99 of "
            "each request's largest stall, scheduling delay and fluidity-index.",
            measure=Point(load=0.4),
            verdict=M["p99_tbt_ms"],
            metrics=(M["p99_max_tbt_ms"], M["median_scheduling_delay_ms"],
                     M["mean_fluidity_index"]),
            slo_line=(200.0, "Sarathi TBT SLO 200 ms"),
        ),
        expected=("grew", "flipped"),
        expected_text="a few percent apart in normalized latency, several times apart in P99 "
        "TBT and maximum stall",
        checklist=("C11", "C12"),
    ),
    Entry(
        id="MD2",
        dimension="metric design",
        title="Per-request percentiles of a per-token quantity",
        description="A P99 over requests of each request's mean token gap (P99 TPOT) averages "
        "away the tail gaps that a per-token percentile shows.",
        base=CONV,
        systems={
            # NOTE: Orca-style mixed batching admits whole prompts into decode steps, so its
            # budget must hold the longest prompt, as prefill-first's (8192 here).
            "mixed": ("engine.policy=mixed", "engine.max_num_batched_tokens=8192"),
            "chunked_prefill": CHUNKED,
        },
        candidate="chunked_prefill",
        baseline="mixed",
        unfair=Setup(
            description="P99 TPOT: the 99th percentile over requests of each request's mean "
            "inter-token time (vLLM's benchmark key), at 0.55 x saturation.",
            measure=Point(load=0.55),
            verdict=M["p99_tpot_ms"],
            metrics=(M["mean_tpot_ms"],),
        ),
        fair=Setup(
            description="P99 TBT over all tokens (population stated: per token) and the P99 "
            "over requests of the largest gap, from the same runs.",
            measure=Point(load=0.55),
            verdict=M["p99_tbt_ms"],
            metrics=(M["p99_max_tbt_ms"],),
            slo_line=(200.0, "Sarathi TBT SLO 200 ms"),
        ),
        expected=("grew", "flipped"),
        expected_text="tail gaps hidden by per-request averaging appear in the per-token tail",
        checklist=("C11", "C14"),
    ),
    Entry(
        id="MD3",
        dimension="metric design",
        title="One TTFT SLO for every prompt length",
        description="A fixed TTFT target treats a 4000-token prompt like a 40-token one; a "
        "prompt-length-aware deadline (Etalon) judges both fairly, and TBT with it.",
        base=ARXIV,
        # NOTE: the pair differs exactly where the two metrics differ. Prefill time grows with
        # the prompt. prefill_first runs every waiting prompt whole in the next step, so a
        # 4,000-token prompt's first token comes one prefill step after it is admitted, and
        # every running stream stalls for that step. Chunked prefill with small chunks (vLLM
        # v0's 512-token default) spreads the same prompt over 8+ steps shared with the
        # decodes (512 tokens minus the running decodes per step), so its long prompts' TTFT is
        # several times longer and grows faster with load, while no step is long enough to
        # stall a stream. The arXiv trace's prompts span 73 to 3,930 tokens (1st-99th
        # percentile): a fixed P99 TTFT <= 500 ms is decided by the longest ones, where
        # prefill_first is strong; Etalon gives those prompts 250 + 0.25 x 4,000 = 1,250 ms
        # (2.5x the fixed target) and also counts the stalls, so the small-chunk system's TTFT
        # limit recedes towards its saturation and prefill_first loses its edge. Declared
        # before running: prefill_first's advantage shrinks by more than the 10% margin or
        # reverses.
        systems={"prefill_first": PREFILL_FIRST, "chunked_prefill": CHUNKED_512},
        candidate="chunked_prefill",
        baseline="prefill_first",
        unfair=Setup(
            description="Capacity under one fixed SLO, P99 TTFT <= 500 ms, for prompts of "
            "73 to 3,930 tokens (1st-99th percentile), of prefill_first (whole prompts, "
            "8192-token budget) vs chunked prefill with vLLM v0's 512-token budget.",
            measure=Capacity("p99_ttft_ms<=500"),
            verdict=capacity_metric("p99_ttft_ms<=500"),
        ),
        fair=Setup(
            description="Capacity under Etalon's deadlines: first token due 250 ms + 0.25 ms "
            "per prompt token after arrival, then one every 50 ms (P99 miss rate <= 0.1).",
            measure=Capacity("etalon"),
            verdict=capacity_metric("etalon"),
        ),
        expected=("shrank", "flipped"),
        expected_text="the fixed SLO, decided by the longest prompts' TTFT, overstates "
        "prefill_first's lead over small-chunk chunked prefill; under prompt-length-aware "
        "deadlines that also count stalls the lead shrinks or reverses",
        checklist=("C13",),
    ),
    Entry(
        id="MD4",
        dimension="metric design",
        title="Peak throughput without a latency bound",
        description="Offline throughput rewards huge batches that no interactive SLO would "
        "accept; capacity under an SLO does not.",
        base=CONV,
        systems={
            "static": ("engine.policy=static", "engine.max_num_seqs=1024"),
            "chunked_prefill": (*CHUNKED, "engine.max_num_seqs=128"),
        },
        candidate="static",
        baseline="chunked_prefill",
        unfair=Setup(
            description="Offline output-token throughput (every request at t=0, no latency "
            "bound) of static batching with batches of up to 1024 requests vs chunked "
            "prefill serving at most 128 concurrent requests; fixed 512/128 lengths.",
            overrides=FIXED_512_128,
            measure=Point(load=None, requests=4.0),
            verdict=M["output_throughput"],
            metrics=(M["request_throughput"],),
        ),
        fair=Setup(
            description="Capacity under a per-request SLO (90% of requests with TTFT <= 2 s "
            "and TPOT <= 100 ms), same lengths.",
            overrides=FIXED_512_128,
            measure=Capacity("attainment:0.9"),
            verdict=capacity_metric("attainment:0.9"),
        ),
        expected=("flipped",),
        expected_text="static batching with a large batch wins offline throughput and loses "
        "capacity under an SLO",
        checklist=("C14",),
    ),
    Entry(
        id="MD5",
        dimension="metric design",
        title="Placement judged by TTFT at one low load",
        description="Disaggregated prefill/decode is judged by TTFT at a low rate, where its "
        "dedicated prefill GPUs shine, instead of by goodput per GPU under TTFT and TPOT SLOs.",
        base=CONV,
        systems={"colocated": COLOCATED_3, "disaggregated": DISAGGREGATED_2P1D},
        candidate="disaggregated",
        baseline="colocated",
        unfair=Setup(
            description="Mean TTFT at one low rate (0.1 x saturation) of three co-located "
            "chunked-prefill replicas (3 x TP1) vs a disaggregated cluster on the same 3 GPUs "
            "(one prefill instance at TP2, one decode instance at TP1).",
            overrides=DISTSERVE_CHATBOT_SLO,
            measure=Point(load=0.1),
            verdict=M["mean_ttft_ms"],
            metrics=(M["p99_ttft_ms"], M["mean_tpot_ms"]),
        ),
        fair=Setup(
            description="Goodput per GPU (DistServe): the highest rate per GPU at which 90% of "
            "requests meet both TTFT <= 250 ms and TPOT <= 100 ms (DistServe's chatbot SLOs), "
            "for the same two placements.",
            overrides=DISTSERVE_CHATBOT_SLO,
            measure=Capacity(GOODPUT),
            verdict=capacity_metric(GOODPUT, per_gpu=True),
        ),
        expected=("flipped", "shrank"),
        expected_text="disaggregation's TTFT lead at low load does not carry over to goodput "
        "per GPU, which depends on the prefill:decode split and the SLOs (DistServe)",
        checklist=("C3", "C14"),
    ),
)

# NOTE: `full` is the default, about a minute of simulation on two cores, with five seeds (a
# t-interval from fewer has so few degrees of freedom that it spans most of the axis).
# `quick` (hidden, `--quick`) may lose precision but must draw every conclusion the full
# catalog draws (tests/test_antipatterns.py compares them): it keeps the full runs' length and
# search precision and drops to three seeds (the first three of the full catalog's, so its
# intervals are wider, its centres close). Shorter runs change conclusions: at 300 or 600
# requests ES1's and ES4's fair capacities (long arXiv prompts, bursts) are measured before the
# queue shows the SLO violations that 1,200 requests reach, which is ES3's own anti-pattern.
# `tiny` is for tests only (seconds for the whole catalog, mechanics only).
SIZES: dict[str, Size] = {
    "full": Size("full", requests=1200, seeds=5, saturation_requests=1000, tolerance=0.05,
                 max_probes=8),
    "quick": Size("quick", requests=1200, seeds=3, saturation_requests=1000, tolerance=0.05,
                  max_probes=8),
    "tiny": Size("tiny", requests=16, seeds=2, saturation_requests=500, tolerance=0.4,
                 max_probes=1),
}


def get_entries(ids: list[str] | None = None) -> list[Entry]:
    """The catalog entries with these ids (all when None), in catalog order."""
    if not ids:
        return list(CATALOG)
    known = {e.id: e for e in CATALOG}
    wanted = [i.strip().upper() for i in ids]
    unknown = [i for i in wanted if i not in known]
    if unknown:
        raise InputError(
            f"unknown catalog entry {unknown[0]!r} (known: {', '.join(known)})", field="--only"
        )
    return [e for e in CATALOG if e.id in set(wanted)]
