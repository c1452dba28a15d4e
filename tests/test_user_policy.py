"""The shipped user-defined policy (scenarios/policies/shortest_prompt_first.py): it loads
through the registry as a user's file would, admits shortest prompts first on a hand-made
queue, and its example scenario runs from any working directory."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from simserve.cli import main
from simserve.config import load_scenario
from simserve.engine import POLICIES, QUEUES, ReplicaState, RequestTable
from simserve.engine.registry import policy_class
from simserve.experiments.run import run_scenario

ROOT = Path(__file__).resolve().parent.parent
POLICY_FILE = ROOT / "scenarios" / "policies" / "shortest_prompt_first.py"
EXAMPLE = ROOT / "scenarios" / "policies" / "example.yaml"
SMALL = ["workload.num_requests=80", "metrics.warmup_s=0", "metrics.cooldown_s=0"]


@pytest.fixture(scope="module")
def user_policy() -> type:
    return policy_class(f"{POLICY_FILE}:ShortestPromptFirst")


def test_the_example_policy_is_short():
    assert len(POLICY_FILE.read_text().splitlines()) < 40


def _waiting(prompts: list[int], *, budget: int = 256, num_blocks: int = 1000,
             queue: str = "fcfs") -> ReplicaState:
    n = len(prompts)
    table = RequestTable(np.asarray(prompts), np.full(n, 4), np.arange(n) * 0.1)
    state = ReplicaState(0, table, engine_id=0, num_blocks=num_blocks, block_size=16,
                         max_num_seqs=8, max_num_batched_tokens=budget, queue=QUEUES[queue])
    for rid in range(n):
        state.waiting.push(rid)
    return state


def test_admission_is_shortest_prompt_first_where_fcfs_takes_arrival_order(user_policy):
    prompts = [300, 40, 120, 20, 60]
    builtin = POLICIES["chunked_prefill"]().schedule(_waiting(prompts), 0.0)
    mine = user_policy().schedule(_waiting(prompts), 0.0)
    # FCFS: r0's 300-token prompt takes the whole 256-token budget.
    assert (builtin.admit, builtin.chunks) == ((0,), (256,))
    # Shortest first: 20 + 40 + 60 + 120 = 240 tokens, then 16 of r0's prompt.
    assert (mine.admit, mine.chunks) == ((3, 1, 4, 2, 0), (20, 40, 60, 120, 16))
    # The same admissions as the built-in policy under the shortest_prompt queue order.
    keyed = POLICIES["chunked_prefill"]().schedule(_waiting(prompts, queue="shortest_prompt"),
                                                   0.0)
    assert (keyed.admit, keyed.chunks) == (mine.admit, mine.chunks)


def test_admission_stops_at_the_first_prompt_kv_cannot_hold(user_policy):
    # 16-token blocks, 6 free: r3 (2 blocks) and r1 (3 blocks) fit, r4 (4 blocks) does not,
    # and nobody behind it is admitted ahead of it (no skipping, as in the built-in).
    state = _waiting([300, 40, 120, 20, 60], num_blocks=6)
    plan = user_policy().schedule(state, 0.0)
    assert plan.admit == (3, 1) and plan.chunks == (20, 40)
    state.begin(plan, 0.0)
    assert list(state.waiting) == [0, 2, 4] and state.free_blocks == 1


def test_admission_takes_what_decodes_and_partial_prefills_leave(user_policy):
    state = _waiting([300, 40, 120, 20, 60], budget=128)
    policy = user_policy()
    first = policy.schedule(state, 0.0)
    # 20 + 40 + 60, then the first 8 tokens of r2's prompt.
    assert (first.admit, first.chunks) == ((3, 1, 4, 2), (20, 40, 60, 8))
    state.finish(first, state.begin(first, 0.0), 0.0, 0.01)
    # r3, r1, r4 decode (3 tokens), r2's prefill goes on (112 tokens): 13 left for r0.
    second = policy.schedule(state, 0.01)
    assert second.num_decodes == 3 and second.decode_blocks == 0
    assert (second.admit, second.chunks) == ((0,), (112, 13))
    state.begin(second, 0.01)
    # Blocks of 16 tokens: r3 2, r1 3, r4 4 (room for their next token), r2 8, r0 1.
    assert not state.waiting and state.free_blocks == 1000 - (2 + 3 + 4 + 8 + 1)


def test_the_example_runs_from_any_directory_with_the_users_class(tmp_path, monkeypatch,
                                                                  capsys, user_policy):
    monkeypatch.chdir(tmp_path)  # class reference relative to the scenario, not here
    args = ["run", str(EXAMPLE), "--out", "run"]
    for item in SMALL:
        args += ["--set", item]
    assert main(args) == 0, capsys.readouterr().err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["policy"] == user_policy.name == "shortest_prompt_first"
    assert summary["completed"] + summary["num_rejected"] == 80


def test_on_the_example_it_matches_the_builtin_with_the_shortest_prompt_order():
    """Documented in scenarios/sweeps/README.md: with no preemption, the user's admission
    rule and the shortest_prompt queue order schedule the same steps."""
    mine = run_scenario(load_scenario(EXAMPLE, SMALL))
    keyed = run_scenario(load_scenario(EXAMPLE, [*SMALL, "engine.policy=chunked_prefill",
                                                 "engine.queue=shortest_prompt"]))
    fcfs = run_scenario(load_scenario(EXAMPLE, [*SMALL, "engine.policy=chunked_prefill"]))
    assert mine.summary["num_preemptions"] == 0
    assert np.array_equal(mine.result.token_times_s, keyed.result.token_times_s)
    # ... and not FCFS's (the example is loaded enough for the order to matter).
    assert mine.summary["mean_ttft_ms"] != fcfs.summary["mean_ttft_ms"]
