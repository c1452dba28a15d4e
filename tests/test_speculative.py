"""Speculative decoding: acceptance samplers vs theory, the batch-1 formula, invariants, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from simserve.cli import main
from simserve.config import AcceptanceConfig, SpeculativeConfig
from simserve.costmodel import ConstantCostModel
from simserve.costmodel.speculative import SpeculativeCostModel
from simserve.engine import POLICIES, EngineLimits, EngineSetup, Speculation, simulate
from simserve.engine.speculative import AcceptanceSampler, expected_tokens_per_step
from simserve.workload import Workload

K = 4
N = 40_000


def _sample(config: AcceptanceConfig, seed: int = 0) -> np.ndarray:
    sampler = AcceptanceSampler.create(config, K, np.random.default_rng(seed), 10)
    return sampler.sample(np.zeros(N, dtype=np.int64))


def _chi_square_p(observed_counts: np.ndarray, probs: np.ndarray) -> float:
    return float(stats.chisquare(observed_counts, probs * observed_counts.sum()).pvalue)


def test_geometric_matches_truncated_geometric_distribution():
    alpha = 0.7
    a = _sample(AcceptanceConfig(model="geometric", alpha=alpha))
    probs = np.array([alpha**j * (1 - alpha) for j in range(K)] + [alpha**K])
    # Fixed seed; a correct sampler fails this at the 0.1% level only by bad luck.
    assert _chi_square_p(np.bincount(a, minlength=K + 1), probs) > 1e-3
    assert (a + 1).mean() == pytest.approx(expected_tokens_per_step(alpha, K), rel=0.01)


def test_per_position_stops_at_first_rejection():
    rates = (0.9, 0.8, 0.6, 0.3)
    a = _sample(AcceptanceConfig(model="per_position", rates=rates))
    survive = np.cumprod((1.0, *rates))  # P(A >= j)
    probs = np.append(survive[:-1] - survive[1:], survive[-1])
    assert _chi_square_p(np.bincount(a, minlength=K + 1), probs) > 1e-3


def test_empirical_histogram_is_reproduced():
    hist = (1.0, 2.0, 3.0, 2.0, 2.0)
    a = _sample(AcceptanceConfig(model="empirical", histogram=hist))
    probs = np.asarray(hist) / sum(hist)
    assert _chi_square_p(np.bincount(a, minlength=K + 1), probs) > 1e-3


def test_beta_draws_one_alpha_per_request():
    config = AcceptanceConfig(model="beta", a=8.0, b=2.0)
    sampler = AcceptanceSampler.create(config, K, np.random.default_rng(1), 5000)
    assert sampler.request_alpha is not None
    # Beta(8, 2) has mean 0.8 and sd 0.12: the sample mean is within 3 standard errors.
    assert abs(sampler.request_alpha.mean() - 0.8) < 3 * 0.1206 / np.sqrt(5000)
    easy = int(np.argmax(sampler.request_alpha))
    hard = int(np.argmin(sampler.request_alpha))
    ids = np.array([easy] * 4000 + [hard] * 4000)
    a = sampler.sample(ids)
    assert a[:4000].mean() > a[4000:].mean()


def _spec_run(alpha: float, k: int, c: float, output_len: int, seed: int, spec: bool = True):
    step_s = 0.01
    config = SpeculativeConfig(
        method="eagle", num_speculative_tokens=k, draft_cost_fraction=c,
        acceptance=AcceptanceConfig(alpha=alpha),
    )
    workload = Workload(arrived_at=np.zeros(1), prompt_len=np.array([16]),
                        output_len=np.array([output_len]))
    cost = SpeculativeCostModel(ConstantCostModel(step_s), None, c)
    limits = EngineLimits(num_blocks=10_000, block_size=16, max_num_seqs=4,
                          max_num_batched_tokens=512, max_model_len=100_000)
    setup = EngineSetup.colocated(
        POLICIES["chunked_prefill"], cost, limits,
        speculation=Speculation.from_config(config) if spec else None)
    return simulate(workload, setup, acceptance_rng=np.random.default_rng(seed))


@pytest.mark.parametrize(("alpha", "k", "c"), [(0.6, 3, 0.1), (0.8, 5, 0.05), (0.3, 2, 0.2)])
def test_batch_one_tokens_per_step_and_speedup_match_theory(alpha, k, c):
    """Batch size 1, constant cost: E = (1 - a^(k+1)) / (1 - a) tokens per verify step and a
    speedup of E / (k c + 1) over plain decoding (within 2% over ~5,000 verify steps)."""
    n = 15_000
    spec = _spec_run(alpha, k, c, n, seed=3)
    plain = _spec_run(alpha, k, c, n, seed=3, spec=False)
    verify_steps = int(np.count_nonzero(spec.steps.num_decode_tokens))
    tokens_per_step = (n - 1) / verify_steps  # the first token comes from the prefill
    expected = expected_tokens_per_step(alpha, k)
    assert tokens_per_step == pytest.approx(expected, rel=0.02)
    decode_time = lambda r: r.finished_at[0] - r.tokens_of(0)[0]  # noqa: E731
    speedup = decode_time(plain) / decode_time(spec)
    assert speedup == pytest.approx(expected / (k * c + 1), rel=0.02)
    assert spec.spec_num_drafts == verify_steps


@st.composite
def spec_runs(draw):
    n = draw(st.integers(1, 10))
    gaps = draw(st.lists(st.floats(0, 0.05), min_size=n - 1, max_size=n - 1))
    arrived = np.cumsum([0.0, *gaps])
    workload = Workload(
        arrived_at=arrived,
        prompt_len=np.array(draw(st.lists(st.integers(1, 30), min_size=n, max_size=n))),
        output_len=np.array(draw(st.lists(st.integers(1, 25), min_size=n, max_size=n))),
    )
    k = draw(st.integers(1, 5))
    config = SpeculativeConfig(
        method="eagle", num_speculative_tokens=k,
        acceptance=AcceptanceConfig(alpha=draw(st.floats(0, 0.95))),
        disable_above_batch=draw(st.one_of(st.none(), st.integers(1, 4))),
    )
    limits = EngineLimits(
        num_blocks=draw(st.integers(4, 40)), block_size=draw(st.sampled_from([1, 4, 16])),
        max_num_seqs=draw(st.integers(1, 6)), max_num_batched_tokens=draw(st.integers(16, 64)),
        max_model_len=200,
    )
    policy = draw(st.sampled_from(["chunked_prefill", "prefill_first"]))
    return workload, config, limits, policy, draw(st.integers(0, 10))


@settings(max_examples=120, deadline=None)
@given(spec_runs())
def test_speculative_invariants(run):
    workload, config, limits, policy, seed = run
    setup = EngineSetup.colocated(
        POLICIES[policy], SpeculativeCostModel(ConstantCostModel(0.01), None, 0.1), limits,
        speculation=Speculation.from_config(config))
    r = simulate(workload, setup, acceptance_rng=np.random.default_rng(seed))
    served = r.rejected == 0
    counts = np.diff(r.token_offsets)
    # The last burst is truncated: exactly the asked-for tokens, never more.
    assert np.array_equal(counts[served], r.output_len[served])
    assert np.all(r.steps.kv_blocks_used <= limits.num_blocks)
    for i in np.flatnonzero(served):
        assert np.all(np.diff(r.tokens_of(i)) >= 0)
    if config.disable_above_batch is not None:
        # Verify steps (k+1 tokens per decode) only when the decode batch is small enough.
        width = config.num_speculative_tokens + 1
        verify = r.steps.num_decode_tokens > r.steps.num_seqs
        decodes = r.steps.num_decode_tokens[verify] // width
        assert np.all(decodes <= config.disable_above_batch)


def _scenario(tmp_path, spec: str, policy: str = "chunked_prefill") -> str:
    path = tmp_path / "spec.yaml"
    path.write_text(
        f"engine:\n  policy: {policy}\n  speculative: {spec}\n"
        "workload:\n  num_requests: 30\n  arrival: {rate: 4}\n"
        "  lengths: {dist: fixed, prompt_len: 64, output_len: 40}\n"
    )
    return str(path)


def test_run_reports_vllm_spec_decode_keys_and_bursts(tmp_path):
    spec = "{method: draft, draft_model: llama-3.2-1b, num_speculative_tokens: 3}"
    assert main(["run", _scenario(tmp_path, spec), "--out", str(tmp_path / "r")]) == 0
    s = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert s["spec_decode_draft_tokens"] == 3 * s["spec_decode_num_drafts"]
    assert 0 < s["spec_decode_acceptance_rate"] < 100
    rates = s["spec_decode_per_position_acceptance_rates"]
    assert len(rates) == 3 and rates == sorted(rates, reverse=True)
    length = 1 + s["spec_decode_accepted_tokens"] / s["spec_decode_num_drafts"]
    assert s["spec_decode_acceptance_length"] == pytest.approx(length)
    # Bursts: tokens share timestamps, so the median TBT is 0 while ITL (per chunk) is not.
    assert s["median_tbt_ms"] == 0.0 and s["median_itl_ms"] > 0


@pytest.mark.parametrize(
    ("spec", "policy", "needle"),
    [
        ("{method: eagle, num_speculative_tokens: 0}", "chunked_prefill", "num_speculative_tokens"),
        ("{method: eagle, acceptance: {alpha: 1.2}}", "chunked_prefill", "alpha"),
        ("{method: eagle, num_speculative_tokens: 2, acceptance: {model: per_position, "
         "rates: [0.5, 0.9]}}", "chunked_prefill", "non-increasing"),
        ("{method: eagle, num_speculative_tokens: 2, acceptance: {model: per_position, "
         "rates: [1.5, 0.9]}}", "chunked_prefill", "rates"),
        ("{method: draft, draft_model: opt-13b}", "chunked_prefill", "vocabulary"),
        ("{method: eagle}", "static", "engine.speculative"),
    ],
)
def test_bad_speculative_config_exits_2(tmp_path, capsys, spec, policy, needle):
    code = main(["run", _scenario(tmp_path, spec, policy), "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


@settings(max_examples=200, deadline=None)
@given(computed=st.lists(st.integers(0, 5000), min_size=1, max_size=40),
       width=st.integers(1, 40), block_size=st.sampled_from([1, 4, 16, 32]),
       seed=st.integers(0, 2**31))
def test_verify_block_accounting_matches_the_ceilings(computed, width, block_size, seed):
    """VerifyDecodes' block arithmetic equals the blocks held by ceil(tokens / block size):
    the need of `width` more tokens, the blocks of rejected positions freed by a verify, and
    the accepted-position counts however the histogram is folded."""
    from simserve.engine.decodes import VerifyDecodes

    def blocks(tokens: np.ndarray) -> np.ndarray:
        return -(-tokens // block_size)

    k = 4
    sampler = AcceptanceSampler.create(AcceptanceConfig(model="geometric", alpha=0.6), k,
                                       np.random.default_rng(seed), len(computed))
    dec = VerifyDecodes(block_size, False, None, len(computed), sampler, k)
    for rid, c in enumerate(computed):
        dec.join(rid, c, 1 + rid % 7)
    before = np.array(computed, dtype=np.int64)
    m = len(computed)
    assert dec.block_need(m, width) == int((blocks(before + width) - blocks(before)).sum())
    remaining = np.array([1 + rid % 7 for rid in range(m)], dtype=np.int64)
    finished, freed = dec.end_step(m, k + 1, step=0)
    # The same generator state draws the same accepted counts.
    twin = AcceptanceSampler.create(AcceptanceConfig(model="geometric", alpha=0.6), k,
                                    np.random.default_rng(seed), len(computed))
    accepted = twin.sample(np.arange(m))
    kept_tokens = {rid: c for rid, c in finished} | {rid: c for rid, c, _ in dec.members()}
    after = np.array([kept_tokens[rid] for rid in range(m)], dtype=np.int64)
    assert list(after - before) == list(np.minimum(accepted + 1, remaining))
    assert freed == int((blocks(before + k + 1) - blocks(after)).sum())
    assert {rid for rid, _ in finished} == {rid for rid in range(m)
                                            if after[rid] - before[rid] == remaining[rid]}
    hist = np.bincount(accepted, minlength=k + 1)
    assert list(dec.accepted_per_position) == list(hist[1:][::-1].cumsum()[::-1])
