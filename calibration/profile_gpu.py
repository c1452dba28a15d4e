"""Time prefill, decode and mixed steps of a decoder with random weights; write the CSV that
`simserve calibrate` fits.

For users with a GPU: builds a decoder-only transformer with the architecture of a catalog model
(layers, hidden size, heads, KV heads, MLP, vocabulary; weights random, nothing downloaded), then
times, after warm-up, with CUDA events (wall clock on a CPU):

- prefill steps of q new tokens over c cached tokens (one sequence, or a batch of equal chunks),
- decode steps of b sequences over a context of l tokens each,
- mixed steps: one prefill chunk plus b decode tokens in the same forward pass,

and writes one row per step shape: gpu, model, tp, engine, the BatchShape aggregates simserve
prices (num_prefill_tokens, prefill_attn_pairs, decode_kv_tokens, ...) and the median time_ms.

    python calibration/profile_gpu.py --model llama-3-8b --gpu h100-80gb-sxm --out steps.csv
    simserve calibrate steps.csv

The model runs in eager PyTorch with scaled_dot_product_attention: a profile of THIS engine
(`--engine torch-eager`), a lower bound on what a serving engine's kernels do. Requires PyTorch
(an optional extra, not a simserve dependency). TP is 1 (one device).
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from simserve.calibration.datasets import STEP_COLUMNS
from simserve.catalog import ModelSpec, load_catalog

try:  # torch is optional: simserve itself never needs it
    import torch
    import torch.nn.functional as F
except ImportError:  # pragma: no cover - exercised only without torch
    torch = None  # type: ignore[assignment]

DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


@dataclass(frozen=True)
class Step:
    """One step shape to time: `chunks` prefill chunks of q over c, `batch` decodes over l."""

    q: int = 0  # new tokens per prefill chunk
    c: int = 0  # cached tokens per prefill chunk
    chunks: int = 0  # number of prefill chunks
    batch: int = 0  # decode sequences
    context: int = 0  # KV tokens per decode sequence, including the new one

    def shape(self) -> dict[str, float]:
        """The BatchShape aggregates simserve's cost model prices."""
        return {
            "num_prefill_tokens": self.chunks * self.q,
            "num_prefill_seqs": self.chunks,
            "prefill_attn_pairs": self.chunks * self.q * (self.c + self.q / 2),
            "prefill_kv_tokens": self.chunks * (self.c + self.q),
            "num_decode_seqs": self.batch,
            "num_decode_tokens": self.batch,
            "decode_kv_tokens": self.batch * self.context,
        }


class Decoder:
    """A decoder-only transformer with random weights, laid out like the catalog model."""

    def __init__(self, model: ModelSpec, device: str, dtype: torch.dtype, seed: int = 0) -> None:
        gen = torch.Generator(device="cpu").manual_seed(seed)
        self.m, self.device, self.dtype = model, device, dtype
        h, d = model.hidden_size, model.head_dim
        qkv = (model.num_heads + 2 * model.num_kv_heads) * d
        up = model.intermediate_size * (2 if model.mlp == "gated" else 1)

        def weight(rows: int, cols: int) -> torch.Tensor:
            w = torch.randn(rows, cols, generator=gen) * (1.0 / math.sqrt(cols))
            return w.to(device=device, dtype=dtype)

        self.layers = [
            {"qkv": weight(qkv, h), "o": weight(h, model.num_heads * d), "up": weight(up, h),
             "down": weight(h, model.intermediate_size)}
            for _ in range(model.num_layers)
        ]
        self.embed = weight(model.vocab_size, h)
        self.lm_head = self.embed if model.tied_embeddings else weight(model.vocab_size, h)

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        """RMSNorm (gated-MLP models: Llama family) or LayerNorm (plain: OPT, BLOOM)."""
        h = self.m.hidden_size
        return F.rms_norm(x, (h,)) if self.m.mlp == "gated" else F.layer_norm(x, (h,))

    def kv_cache(self, seqs: int, tokens: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Random K and V of `seqs` sequences x `tokens` positions, per layer."""
        m = self.m
        size = (seqs, m.num_kv_heads, tokens, m.head_dim)
        return [(torch.randn(size, device=self.device, dtype=self.dtype),
                 torch.randn(size, device=self.device, dtype=self.dtype))
                for _ in range(m.num_layers)]

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                causal_offset: int | None) -> torch.Tensor:
        """SDPA of q [B, H, Tq, d] over k, v [B, KVH, Tk, d] (GQA: KV heads repeated)."""
        rep = self.m.num_heads // self.m.num_kv_heads
        if rep > 1:
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
        if causal_offset is None:  # decode: the query sees every cached position
            return F.scaled_dot_product_attention(q, k, v)
        if causal_offset == 0:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        tq, tk = q.shape[2], k.shape[2]
        mask = torch.ones(tq, tk, device=q.device, dtype=torch.bool).tril(diagonal=causal_offset)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    @torch.inference_mode()
    def step(self, step: Step, prefill_cache: list, decode_cache: list) -> torch.Tensor:
        """One forward pass: linear layers over all tokens, attention per part, then sampling."""
        m = self.m
        d, nh, nkv = m.head_dim, m.num_heads, m.num_kv_heads
        n_pre, n_dec = step.chunks * step.q, step.batch
        ids = torch.randint(0, m.vocab_size, (n_pre + n_dec,), device=self.device)
        x = self.embed[ids]
        for layer, pcache, dcache in zip(self.layers, prefill_cache or [None] * m.num_layers,
                                         decode_cache or [None] * m.num_layers, strict=True):
            residual = x
            qkv = self._norm(x) @ layer["qkv"].T
            q, k, v = qkv.split([nh * d, nkv * d, nkv * d], dim=-1)
            outs = []
            if n_pre:
                qp = q[:n_pre].reshape(step.chunks, step.q, nh, d).transpose(1, 2)
                kp = k[:n_pre].reshape(step.chunks, step.q, nkv, d).transpose(1, 2)
                vp = v[:n_pre].reshape(step.chunks, step.q, nkv, d).transpose(1, 2)
                if step.c:
                    kp = torch.cat([pcache[0], kp], dim=2)
                    vp = torch.cat([pcache[1], vp], dim=2)
                a = self._attend(qp, kp, vp, causal_offset=step.c)
                outs.append(a.transpose(1, 2).reshape(n_pre, nh * d))
            if n_dec:
                qd = q[n_pre:].reshape(n_dec, 1, nh, d).transpose(1, 2)
                kd = torch.cat([dcache[0], k[n_pre:].reshape(n_dec, nkv, 1, d)], dim=2)
                vd = torch.cat([dcache[1], v[n_pre:].reshape(n_dec, nkv, 1, d)], dim=2)
                a = self._attend(qd, kd, vd, causal_offset=None)
                outs.append(a.transpose(1, 2).reshape(n_dec, nh * d))
            x = residual + torch.cat(outs) @ layer["o"].T
            residual = x
            up = self._norm(x) @ layer["up"].T
            if m.mlp == "gated":
                gate, up = up.chunk(2, dim=-1)
                up = F.silu(gate) * up
            else:
                up = F.relu(up)
            x = residual + up @ layer["down"].T
        # Logits only where a token is sampled: the last position of each chunk, every decode.
        last = [i * step.q + step.q - 1 for i in range(step.chunks)] + list(
            range(n_pre, n_pre + n_dec))
        logits = x[torch.tensor(last, device=self.device)] @ self.lm_head.T
        return logits.argmax(dim=-1)


def timer(device: str) -> Callable[[Callable[[], object]], float]:
    """A function timing one call in ms: CUDA events on a GPU, perf_counter on a CPU."""
    if device.startswith("cuda"):
        def cuda_time(fn: Callable[[], object]) -> float:
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            return float(start.elapsed_time(end))
        return cuda_time

    def cpu_time(fn: Callable[[], object]) -> float:
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3
    return cpu_time


def grid(prefill_tokens: Sequence[int], contexts: Sequence[int], prefill_batches: Sequence[int],
         batches: Sequence[int], decode_contexts: Sequence[int], mixed: bool,
         max_kv_tokens: int, max_len: int) -> list[Step]:
    """The step shapes to time, within the model's context length and a KV-token budget."""
    steps = []
    for q in prefill_tokens:
        for c in contexts:
            for b in prefill_batches:
                if c + q <= max_len and b * (c + q) <= max_kv_tokens:
                    steps.append(Step(q=q, c=c, chunks=b))
    for b in batches:
        for ctx in decode_contexts:
            if ctx <= max_len and b * ctx <= max_kv_tokens:
                steps.append(Step(batch=b, context=ctx))
                if mixed and ctx == decode_contexts[len(decode_contexts) // 2]:
                    q = prefill_tokens[len(prefill_tokens) // 2]
                    if b * ctx + q <= max_kv_tokens and q <= max_len:
                        steps.append(Step(q=q, chunks=1, batch=b, context=ctx))
    return steps


def profile(model: ModelSpec, steps: Sequence[Step], *, device: str, dtype: str, warmup: int,
            repeats: int, seed: int = 0, log: Callable[[str], None] = print) -> list[float]:
    """Median ms of each step shape."""
    torch_dtype = getattr(torch, DTYPES[dtype])
    dec = Decoder(model, device, torch_dtype, seed)
    measure = timer(device)
    times = []
    for i, s in enumerate(steps):
        pre_cache = dec.kv_cache(s.chunks, s.c) if s.chunks and s.c else []
        dec_cache = dec.kv_cache(s.batch, s.context - 1) if s.batch else []
        for _ in range(warmup):
            dec.step(s, pre_cache, dec_cache)
        samples = [measure(lambda s=s, p=pre_cache, d=dec_cache: dec.step(s, p, d))
                   for _ in range(repeats)]
        times.append(statistics.median(samples))
        log(f"[{i + 1}/{len(steps)}] {s}: {times[-1]:.3f} ms")
        del pre_cache, dec_cache
    return times


def write_csv(path: Path, gpu: str, model: str, engine: str, steps: Sequence[Step],
              times: Sequence[float]) -> None:
    """Rows in `STEP_COLUMNS` order (tp is 1: one device)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(STEP_COLUMNS)
        for s, t in zip(steps, times, strict=True):
            shape = s.shape()
            writer.writerow([gpu, model, 1, engine,
                             *(f"{shape[c]:g}" for c in STEP_COLUMNS[4:-1]), f"{t:.6g}"])


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, profile, write the CSV."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="catalog model whose architecture to build")
    p.add_argument("--gpu", required=True, help="catalog GPU name the profile is for")
    p.add_argument("--catalog", help="extra catalog YAML (e.g. a tiny test model)")
    p.add_argument("--out", default="steps.csv")
    p.add_argument("--device", default=None, help="cuda, cuda:1 or cpu (default: cuda if "
                   "available)")
    p.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    p.add_argument("--engine", default="torch-eager", help="engine label stored in the CSV")
    p.add_argument("--prefill-tokens", default="16,64,128,256,512,1024,2048,4096")
    p.add_argument("--contexts", default="0,1024,4096", help="cached tokens for prefill chunks")
    p.add_argument("--prefill-batches", default="1,4")
    p.add_argument("--batches", default="1,2,4,8,16,32,64,128,256")
    p.add_argument("--decode-contexts", default="128,512,2048,8192")
    p.add_argument("--no-mixed", action="store_true", help="skip mixed prefill+decode steps")
    p.add_argument("--max-kv-tokens", type=int, default=200_000,
                   help="skip shapes whose KV cache would exceed this many tokens")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's)")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    if torch is None:
        print("profile_gpu.py needs PyTorch: pip install torch", file=sys.stderr)
        return 2
    catalog = load_catalog(args.catalog)
    model = catalog.model(args.model)
    gpu = catalog.gpu(args.gpu).name
    name = model.name
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    steps = grid(_ints(args.prefill_tokens), _ints(args.contexts), _ints(args.prefill_batches),
                 _ints(args.batches), _ints(args.decode_contexts), not args.no_mixed,
                 args.max_kv_tokens, model.max_model_len)
    times = profile(model, steps, device=device, dtype=args.dtype, warmup=args.warmup,
                    repeats=args.repeats, seed=args.seed,
                    log=(lambda _s: None) if args.quiet else print)
    write_csv(Path(args.out), gpu, name, args.engine, steps, times)
    print(f"wrote {len(steps)} steps to {args.out}; fit with: simserve calibrate {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
