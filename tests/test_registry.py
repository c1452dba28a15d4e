"""Where `engine.policy` and `engine.queue` come from (engine.registry): every built-in name
loads, and every mistake in a reference to a user's class is one line naming the field, the
scenario file and its line (exit code 2, no traceback), before anything runs."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest

from simserve.cli import main
from simserve.config import load_scenario
from simserve.engine import POLICIES, QUEUES
from simserve.errors import InputError

SCENARIO = """\
name: registry
model: llama-3-8b
hardware: h100-80gb-sxm
engine:
  {field}: {ref}
  max_num_batched_tokens: 8192
workload:
  num_requests: 20
  lengths: {{dist: fixed, prompt_len: 64, output_len: 8}}
"""
LINE = 5  # the line of `{field}: {ref}` above

USER_MODULE = '''\
from simserve.engine import BatchingPolicy, ChunkedPrefillPolicy, KeyedQueue, StepPlan

NOT_A_CLASS = 3


class NoSchedule:
    name = "no_schedule"


class TooFewArgs(BatchingPolicy):
    name = "too_few_args"

    def schedule(self, state):
        return StepPlan()


class NoCapabilities:
    def schedule(self, state, now):
        return StepPlan()


class NotBoolCapability(BatchingPolicy):
    name = "not_bool"
    whole_prompts = "yes"

    def schedule(self, state, now):
        return StepPlan()


class BadGeneration(BatchingPolicy):
    name = "bad_generation"
    engine_generation = "v2"

    def schedule(self, state, now):
        return StepPlan()


class NeedsArguments(BatchingPolicy):
    name = "needs_arguments"

    def __init__(self, budget):
        self.budget = budget

    def schedule(self, state, now):
        return StepPlan()


class KeepsBuiltinName(ChunkedPrefillPolicy):
    pass


class Unnamed(BatchingPolicy):
    def schedule(self, state, now):
        return StepPlan()


class NotAQueue:
    name = "not_a_queue"

    def key(self, request_id):
        return (request_id,)


class KeyWithoutRequest(KeyedQueue):
    name = "key_without_request"

    def key(self):
        return ()


class QueueKeepsFcfsName(KeyedQueue):
    def key(self, request_id):
        return (-request_id,)


class NewestFirst(KeyedQueue):
    name = "newest_first"

    def key(self, request_id):
        return (-self.requests.arrived_at[request_id], request_id)


class StaticSchedule(ChunkedPrefillPolicy):
    name = "static_schedule"

    @staticmethod
    def schedule(state, now):
        return ChunkedPrefillPolicy().schedule(state, now)
'''


@pytest.fixture
def user_dir(tmp_path: Path) -> Path:
    (tmp_path / "mine.py").write_text(USER_MODULE)
    (tmp_path / "syntax_error.py").write_text("x = 1\ny = (\ndef f():\n    pass\n")
    (tmp_path / "raises.py").write_text("import math\n\nraise RuntimeError('boom')\n")
    (tmp_path / "imports_missing.py").write_text("x = 1\nimport simserve_no_such_module\n")
    return tmp_path


def _scenario(directory: Path, field: str, ref: str) -> Path:
    path = directory / "scenario.yaml"
    path.write_text(SCENARIO.format(field=field, ref=ref))
    return path


def _run_cli(scenario: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["run", str(scenario), "--out", str(scenario.parent / "out")])
    return code, capsys.readouterr().err


# (field, reference as written in the scenario, what the error says); `{dir}` is the
# scenario's folder, where relative files are looked up.
BAD_REFERENCES = [
    ("policy", "missing.py:Policy", "no such file {dir}/missing.py"),
    ("policy", "mine.py:Missing", "{dir}/mine.py defines no Missing"),
    ("policy", "mine.py:NOT_A_CLASS", "NOT_A_CLASS in {dir}/mine.py is not a class"),
    ("policy", "mine.py:NoSchedule", "has no schedule(state, now) method"),
    ("policy", "mine.py:TooFewArgs", "TooFewArgs ({dir}/mine.py:TooFewArgs).schedule must "
     "take (self, state, now)"),
    ("policy", "mine.py:NoCapabilities", "must declare name (str); subclass "
     "simserve.engine.BatchingPolicy for the defaults"),
    ("policy", "mine.py:NotBoolCapability", "must declare whole_prompts (bool)"),
    ("policy", "mine.py:BadGeneration", "engine_generation must be one of v0, v1, got 'v2'"),
    ("policy", "mine.py:NeedsArguments",
     "building NeedsArguments ({dir}/mine.py:NeedsArguments) failed: TypeError"),
    ("policy", "mine.py:KeepsBuiltinName", "must declare a name of its own (it has "
     "'chunked_prefill'"),
    ("policy", "mine.py:Unnamed", "must declare a name of its own (it has 'policy'"),
    ("policy", "syntax_error.py:Policy", "{dir}/syntax_error.py:2: "),
    ("policy", "raises.py:Policy", "{dir}/raises.py:3: RuntimeError: boom"),
    ("policy", "imports_missing.py:Policy", "{dir}/imports_missing.py:2: ModuleNotFoundError: "
     "No module named 'simserve_no_such_module'"),
    ("policy", "simserve_no_such_package.policies:Policy",
     "cannot import simserve_no_such_package.policies"),
    ("policy", "json:NoSuchClass", "json defines no NoSuchClass"),
    ("policy", "os.path:join", "join in os.path is not a class"),
    ("policy", "'mine.py:'", "'{dir}/mine.py:' is not file.py:ClassName or "
     "package.module:ClassName"),
    ("queue", "mine.py:NotAQueue", "is not a queue order: subclass simserve.engine.KeyedQueue"),
    ("queue", "mine.py:KeyWithoutRequest", ".key must take (self, request_id)"),
    ("queue", "mine.py:QueueKeepsFcfsName", "must declare a name of its own (it has 'fcfs'"),
    ("queue", "simserve.engine.policies:ChunkedPrefillPolicy", "is not a queue order"),
    ("queue", "missing.py:Queue", "no such file {dir}/missing.py"),
    ("queue", "syntax_error.py:Queue", "{dir}/syntax_error.py:2: "),
]


@pytest.mark.parametrize(("field", "ref", "message"), BAD_REFERENCES,
                         ids=[f"{f}-{r}" for f, r, _m in BAD_REFERENCES])
def test_a_bad_reference_is_one_line_naming_field_file_and_line(user_dir, capsys, field, ref,
                                                                message):
    scenario = _scenario(user_dir, field, ref)
    code, err = _run_cli(scenario, capsys)
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"simserve: error: {scenario}:{LINE}: engine.{field}: "), err
    assert message.format(dir=user_dir) in err, err
    assert not (user_dir / "out").exists()
    # Through the Python API: the same error, as an InputError carrying the location.
    with pytest.raises(InputError) as caught:
        load_scenario(scenario)
    assert caught.value.field == f"engine.{field}" and caught.value.line == LINE


def test_loading_a_users_file_writes_nothing_beside_it(user_dir, monkeypatch):
    monkeypatch.setattr(sys, "dont_write_bytecode", False)  # Python's default
    before = sorted(p.name for p in user_dir.iterdir())
    load_scenario(_scenario(user_dir, "queue", "mine.py:NewestFirst"))
    # No __pycache__/ (even where Python writes bytecode by default).
    assert sorted(p.name for p in user_dir.iterdir()) == sorted([*before, "scenario.yaml"])


def test_a_set_override_is_relative_to_the_working_directory(user_dir, tmp_path, monkeypatch,
                                                            capsys):
    scenario = _scenario(user_dir, "policy", "chunked_prefill")
    monkeypatch.chdir(user_dir)
    sc = load_scenario(scenario, ["engine.queue=mine.py:NewestFirst"])
    assert sc.engine.queue == f"{user_dir}/mine.py:NewestFirst"
    # Named after the flag when it is wrong.
    code = main(["run", str(scenario), "--out", str(tmp_path / "o"),
                 "--set", "engine.queue=mine.py:Missing"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("simserve: error: --set: engine.queue: "), err


def test_a_users_queue_order_and_a_static_schedule_run(user_dir, capsys):
    scenario = _scenario(user_dir, "queue", "mine.py:NewestFirst")
    text = scenario.read_text().replace("  queue:", "  policy: mine.py:StaticSchedule\n  queue:")
    scenario.write_text(text)
    code, err = _run_cli(scenario, capsys)
    assert code == 0, err
    summary = json.loads((user_dir / "out" / "summary.json").read_text())
    assert (summary["policy"], summary["queue"]) == ("static_schedule", "newest_first")
    assert summary["completed"] == 20


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_every_registered_policy_name_loads(tmp_path, name):
    sc = load_scenario(_scenario(tmp_path, "policy", name))
    assert sc.engine.policy == name


@pytest.mark.parametrize("name", sorted(QUEUES))
def test_every_registered_queue_name_loads(tmp_path, name):
    sc = load_scenario(_scenario(tmp_path, "queue", name))
    assert sc.engine.queue == name


@pytest.mark.parametrize(("field", "registry", "what"),
                         [("policy", POLICIES, "policy"), ("queue", QUEUES, "queue order")])
def test_an_unregistered_name_is_refused_listing_the_registered_ones(tmp_path, capsys, field,
                                                                     registry, what):
    scenario = _scenario(tmp_path, field, "shortest_job_first")
    code, err = _run_cli(scenario, capsys)
    assert code == 2
    assert err == textwrap.dedent(f"""\
        simserve: error: {scenario}:{LINE}: engine.{field}: unknown {what} \
'shortest_job_first': built in are {', '.join(registry)}; a class of your own is \
path/to/file.py:ClassName or package.module:ClassName
        """)


@pytest.mark.parametrize(("field", "name"), [
    ("policy", "Chunked_Prefill"), ("policy", "chunked-prefill"), ("policy", "fcfs"),
    ("policy", "ShortestPromptFirst"), ("queue", "FCFS"), ("queue", "edf"),
    ("queue", "chunked_prefill"), ("queue", "shortest_prompt_first"),
])
def test_only_registered_names_are_accepted(tmp_path, field, name):
    """Near misses are refused too: what config accepts is exactly the registry's keys."""
    with pytest.raises(InputError, match="built in are"):
        load_scenario(_scenario(tmp_path, field, name))
