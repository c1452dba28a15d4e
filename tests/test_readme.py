"""The README: its first commands are the two set-up commands, and its links resolve."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_readme_starts_with_the_two_commands():
    block = re.search(r"```sh\n(.*?)```", README, re.S)
    assert block is not None
    commands = [line.split("#")[0].strip() for line in block.group(1).splitlines()]
    assert commands == ["make run", "make test"]
    assert README.index("```sh") < README.index("\n## ")


def test_readme_links_and_images_exist():
    targets = re.findall(r"\]\(([^)#\s]+)\)", README)
    assert targets, "the README links the docs, notebooks and report"
    missing = [t for t in targets if not t.startswith("http") and not (ROOT / t).exists()]
    assert missing == []


def test_makefile_targets_match_the_readme():
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^run:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_readme_command_examples_name_files_that_exist():
    # The compare and inspect-run examples once named files nobody had (vllm_result.json).
    block = README[README.index("## Commands"):]
    block = block[block.index("```sh") + 5:]
    block = block[:block.index("```")]
    paths = re.findall(r"(?<![\w/.-])((?:scenarios|calibration)/[\w./-]+)", block)
    assert paths and all((ROOT / p).exists() for p in paths), paths
    for command in ("compare", "inspect-run"):
        line = next(line for line in block.splitlines() if f"simserve {command} " in line)
        assert re.search(r"calibration/data/\S+\.csv", line), line
