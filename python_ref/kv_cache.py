"""References for a key/value cache kept in half precision: transformers' GPT2LMHeadModel with
every key and value rounded to float16 (or bfloat16) as it is computed.

    python3 python_ref/kv_cache.py        # golden/model -> golden/reference/kv_cache/
                                          # (export_model.py runs this too)

The Rust crate's half cache (`GenerateOptions::kv_cache`, `KvCache::with_dtype`) rounds each key
and value to nearest as it stores it, and every step attends to them as stored, its own
positions included. In transformers that is a forward hook on each block's `attn.c_attn` that
rounds the key and value thirds of its output (`.to(dtype).float()`, round to nearest even) and
leaves the query alone; the rest of the model runs in float32.

Written, for the first window (n_positions tokens) of golden/reference/perplexity.json's ids:
- `kv_cache/{f16,bf16}.last.npy`: the logits at the window's last position, `[vocab]`;
- `kv_cache/kv_cache.json`: per dtype, max and mean |Δ logit| over the whole window `[T, vocab]`
  against the float32 cache, and the positions whose argmax is the same (the figures
  `examples/precision.rs --kv-cache` prints for the crate).
"""

import json
from pathlib import Path

import numpy as np
import torch
import transformers

ROOT = Path(__file__).resolve().parent.parent
DTYPES = {"f16": torch.float16, "bf16": torch.bfloat16}


def round_keys_values(dtype, width):
    """A forward hook for `attn.c_attn` ([.., 3C] = q | k | v): k and v rounded to `dtype`."""
    def hook(module, args, out):
        q, kv = out[..., :width], out[..., width:]
        return torch.cat([q, kv.to(dtype).to(torch.float32)], dim=-1)
    return hook


def logits_with_cache(model, ids, dtype):
    """Logits `[T, vocab]` of `ids` in one pass, keys and values rounded to `dtype` (None: f32)."""
    hooks = []
    if dtype is not None:
        width = model.config.n_embd
        hooks = [block.attn.c_attn.register_forward_hook(round_keys_values(dtype, width))
                 for block in model.transformer.h]
    try:
        with torch.no_grad():
            return model(torch.tensor([ids])).logits[0]
    finally:
        for h in hooks:
            h.remove()


def write_reference(model_dir="golden/model", ids_file="golden/reference/perplexity.json",
                    out="golden/reference/kv_cache"):
    torch.manual_seed(0)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    model = transformers.GPT2LMHeadModel.from_pretrained(
        ROOT / model_dir, attn_implementation="eager", dtype=torch.float32).eval()
    ids = json.loads((ROOT / ids_file).read_text())["ids"][:model.config.n_positions]
    full = logits_with_cache(model, ids, None)
    out = ROOT / out
    out.mkdir(parents=True, exist_ok=True)
    summary = {"model": model_dir, "ids": f"the first {len(ids)} ids of {ids_file}",
               "positions": len(ids), "dtypes": {},
               "versions": {"torch": torch.__version__, "transformers": transformers.__version__}}
    for name, dtype in DTYPES.items():
        half = logits_with_cache(model, ids, dtype)
        diff = (half - full).abs()
        same = int((half.argmax(-1) == full.argmax(-1)).sum())
        # Four significant digits: the last bits of a float32 sum depend on the CPU's kernels,
        # and the tests compare these figures within 2%.
        summary["dtypes"][name] = {"max_abs_logit_diff": float(f"{float(diff.max()):.4e}"),
                                   "mean_abs_logit_diff": float(f"{float(diff.double().mean()):.4e}"),
                                   "top1_agree": same}
        np.save(out / f"{name}.last.npy", half[-1].numpy().astype(np.float32))
        print(f"{name} cache: max |Δ logit| {float(diff.max()):.4e}, mean {float(diff.double().mean()):.4e}, "
              f"top-1 {same}/{len(ids)}")
    (out / "kv_cache.json").write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    write_reference()
