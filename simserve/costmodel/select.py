"""Pick and build the cost model a scenario asks for."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from simserve.catalog import GpuSpec, ModelSpec
from simserve.config import CostModelConfig, EngineConfig
from simserve.costmodel.base import CostModel
from simserve.costmodel.calibrated import CalibratedCostModel, Profile, load_profile
from simserve.costmodel.constant import ConstantCostModel
from simserve.costmodel.engine_loop import LoopTerms, loop_terms
from simserve.costmodel.kernel_ops import KernelCoverageError
from simserve.costmodel.kernels import KernelCostModel, KernelSetup
from simserve.costmodel.roofline import RooflineCostModel
from simserve.costmodel.serving import ServingOverheadCostModel
from simserve.errors import InputError
from simserve.resources import profiles_dir

__all__ = [
    "PROFILES_DIR",
    "build_cost_model",
    "default_cost_model",
    "find_profile",
    "kernel_cost_model",
    "profile_names",
]

# NOTE: the shipped profiles; a scenario may also give a path to a profile YAML.
PROFILES_DIR = profiles_dir()


def profile_names(directory: Path = PROFILES_DIR) -> list[str]:
    """Names of the profiles shipped in `directory` (file stems), sorted."""
    return sorted(p.stem for p in directory.glob("*.yaml")) if directory.is_dir() else []


def find_profile(name_or_path: str, directory: Path = PROFILES_DIR) -> Path:
    """The file of a profile given by name (under calibration/profiles/) or by path."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise InputError("profile file not found", field="cost_model.profile",
                             source=str(path))
        return path
    candidate = directory / f"{name_or_path}.yaml"
    if candidate.is_file():
        return candidate
    known = ", ".join(profile_names(directory)) or "none"
    raise InputError(
        f"unknown profile {name_or_path!r} (neither a file nor a shipped profile); shipped: "
        f"{known}",
        field="cost_model.profile",
    )


def check_profile_matches(profile: Profile, gpu: GpuSpec, model: ModelSpec, tp: int) -> None:
    """Refuse a profile fitted for another GPU, model or TP, saying how to get a matching one."""
    if profile.kind != "step":
        raise InputError(
            f"profile {profile.name} is a {profile.kind}-layer profile (no attention or step "
            "overheads); use it via `simserve derive-profile --linear-from`",
            field="cost_model.profile",
        )
    problems = []
    if profile.gpu.casefold() != gpu.name.casefold():
        problems.append(f"GPU {profile.gpu} (scenario: {gpu.name})")
    if profile.model.casefold() != model.name.casefold():
        problems.append(f"model {profile.model} (scenario: {model.name})")
    if not profile.covers_tp(tp):
        problems.append(f"{profile.tp_label} (scenario: tp={tp})")
    if problems:
        raise InputError(
            f"profile {profile.name} was fitted for {'; '.join(problems)}; use a matching "
            f"profile, or derive one with `simserve derive-profile {profile.name} --model "
            f"{model.name} --tp {tp}`",
            field="cost_model.profile",
        )


def kernel_cost_model(
    config: CostModelConfig, gpu: GpuSpec, model: ModelSpec, tp: int, engine: EngineConfig,
    *, with_loop: bool = True, selected_by: str | None = None,
) -> KernelCostModel:
    """The measured-kernel cost model of one replica; a scenario the tables cannot price is an
    InputError saying why (`with_loop=False`: the GPU time only, e.g. a speculative draft's
    passes inside the target's step)."""
    # NOTE: `resolve` fills in the policy's generation; v1 (current vLLM) otherwise.
    version = engine.version or "v1"
    loop = loop_terms(version, config.framework)
    given = {name: getattr(config, f"loop_{name}") for name in
             ("per_step_us", "per_seq_us", "per_token_us")}
    if any(v is not None for v in given.values()):
        loop = dataclasses.replace(loop, source="scenario",
                                   **{k: v for k, v in given.items() if v is not None})
    setup = KernelSetup(
        version=version,
        max_num_seqs=engine.max_num_seqs,
        max_num_batched_tokens=engine.max_num_batched_tokens,
        kv_dtype="fp8" if model.kv_bytes == 1 else "bfloat16",
        enforce_eager=engine.enforce_eager,
        loop=loop if with_loop else LoopTerms(version, source="none: GPU time only"),
    )
    try:
        return KernelCostModel(gpu, model, tp, setup, config.framework, selected_by=selected_by)
    except KernelCoverageError as exc:
        raise InputError(
            f"{model.name} at tp={tp} on {gpu.name} cannot be priced from the measured "
            f"{config.framework} kernels: {exc}; use cost_model.kind roofline",
            field="cost_model.kind",
        ) from None


def default_cost_model(
    config: CostModelConfig, gpu: GpuSpec, model: ModelSpec, tp: int, engine: EngineConfig
) -> CostModel:
    """`kind: auto`: the measured-kernel model where its tables cover the scenario, else the
    roofline carrying the reason (its one-line warning in every run)."""
    try:
        return kernel_cost_model(config, gpu, model, tp, engine,
                                 selected_by="auto: measured kernels cover this scenario")
    except InputError as exc:
        reason = exc.message.removesuffix("; use cost_model.kind roofline")
        return RooflineCostModel(gpu=gpu, model=model, tp=tp, config=config, fallback=reason)


def build_cost_model(
    config: CostModelConfig, gpu: GpuSpec, model: ModelSpec, tp: int,
    engine: EngineConfig | None = None,
) -> CostModel:
    """The configured cost model for one replica, plus the serving loop's time outside the
    forward pass when one is set. `engine` (scheduler limits, engine generation, KV dtype) is
    needed by the kernel model; the others ignore it."""
    if config.kind == "kernels":
        base: CostModel = kernel_cost_model(config, gpu, model, tp, engine or EngineConfig())
    elif config.kind == "auto":
        base = default_cost_model(config, gpu, model, tp, engine or EngineConfig())
    else:
        base = _forward_cost_model(config, gpu, model, tp)
    if config.serving_step_ms > 0 or config.serving_per_seq_ms > 0:
        return ServingOverheadCostModel(
            base, config.serving_step_ms * 1e-3, config.serving_per_seq_ms * 1e-3
        )
    return base


def _forward_cost_model(
    config: CostModelConfig, gpu: GpuSpec, model: ModelSpec, tp: int
) -> CostModel:
    if config.kind == "constant":
        return ConstantCostModel(config.step_time_ms * 1e-3)
    if config.kind == "calibrated":
        assert config.profile is not None  # CostModelConfig requires it
        profile = load_profile(find_profile(config.profile))
        check_profile_matches(profile, gpu, model, tp)
        return CalibratedCostModel(profile=profile, gpu=gpu, model=model, tp=tp)
    return RooflineCostModel(gpu=gpu, model=model, tp=tp, config=config)
