"""Tiny GPT-2 variants, one non-default config flag each, and their activations.

    python3 python_ref/variants.py

The committed golden model (golden/model, export_model.py) has GPT-2's own config. Every other
config the crate accepts is checked here, on models small enough to commit many of them:
vocab 64, n_positions 136 (so a prompt can cross the 64-query attention blocks and 130 fits),
n_embd 20, 2 heads of width 10 (widths that are not multiples of 8), 2 layers (so that
`scale_attn_by_inverse_layer_idx` divides layer 1 by 2). Each variant changes one field of
`GPT2Config` from GPT-2's default:

    eps        layer_norm_epsilon = 0.05
    gelu       activation_function = "gelu" (exact, erf)
    n_inner    n_inner = 36 (not 4·n_embd)
    inv_layer  scale_attn_by_inverse_layer_idx = True
    no_scale   scale_attn_weights = False
    untied     tie_word_embeddings = False (lm_head.weight of its own)
    reorder    reorder_and_upcast_attn = True (in float32 the same maths, rounded differently)

Writes golden/variants/ (about 0.6 MB):

* manifest.json: versions, per variant its config summary and the changed field, the prompts'
  ids, the recorded tensor names.
* <variant>/config.json, <variant>/model.safetensors: `save_pretrained` (safetensors only).
* <variant>/short/<name>.npy: every step of src/trace.rs for a 7-token prompt, recorded by
  export_model.py's `Recorder` (forward hooks, masked scores as -inf), float32.
* <variant>/long/logits.npy: the logits [66, vocab] of a 66-token prompt, past the attention
  query block of 64 and the few-rows kernel's 32 rows.

Every variant is checked to matter: with its field set back to GPT-2's default, the logits of
the short prompt move by more than 1e-3 (except `reorder`, which may move them by rounding only:
it scales q·kᵀ inside the product, `baddbmm(alpha=scale)`, instead of after it).

Deterministic: fixed seeds, one thread, deterministic algorithms; running the script twice
leaves every file byte-identical.
"""

import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from transformers import GPT2Config, GPT2LMHeadModel

sys.path.insert(0, str(Path(__file__).resolve().parent))
import export_model as em  # noqa: E402  (sets one thread and deterministic algorithms)

OUT = em.GOLDEN / "variants"
SEED = 20191105  # GPT-2 1.5B's release day
BASE = dict(vocab_size=64, n_positions=136, n_embd=20, n_layer=2, n_head=2, activation_function="gelu_new")
VARIANTS = [
    ("eps", {"layer_norm_epsilon": 0.05}),
    ("gelu", {"activation_function": "gelu"}),
    ("n_inner", {"n_inner": 36}),
    ("inv_layer", {"scale_attn_by_inverse_layer_idx": True}),
    ("no_scale", {"scale_attn_weights": False}),
    ("untied", {"tie_word_embeddings": False}),
    ("reorder", {"reorder_and_upcast_attn": True}),
]
SHORT, LONG = 7, 66
# export_model.py's init scales, with a larger wte: 20 wide instead of 48, the logits need it
# to spread over a few units.
STD = dict(em.STD, wte=0.7, lm_head=0.7)


def build(overrides, seed):
    torch.manual_seed(seed)
    config = GPT2Config(**{**BASE, **overrides}, attn_implementation="eager")
    model = GPT2LMHeadModel(config).eval()
    g = torch.Generator().manual_seed(seed)
    em.randomize(model, STD, g)
    tied = model.lm_head.weight is model.transformer.wte.weight
    assert tied == config.tie_word_embeddings
    if not tied:
        with torch.no_grad():
            w = model.lm_head.weight
            w.copy_(torch.randn(w.shape, generator=g, dtype=torch.float32) * STD["lm_head"])
    return model


def logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids]), use_cache=False).logits[0]


def write_variant(name, overrides, seed, short_ids, long_ids):
    model = build(overrides, seed)
    out = OUT / name
    model.save_pretrained(out, safe_serialization=True)
    (out / "generation_config.json").unlink()  # the tests need config + weights only
    reloaded = GPT2LMHeadModel.from_pretrained(out, attn_implementation="eager", dtype=torch.float32).eval()
    assert torch.equal(logits(reloaded, short_ids), logits(model, short_ids)), f"{name}: reload"

    rec = em.Recorder(model)
    names = em.trace_names(model.config.n_layer)
    try:
        t = rec.run(short_ids)
    finally:
        rec.remove()
    assert list(t) == names
    em.check_trace(model, short_ids, t)
    for n in names:
        em.save_npy(out / "short" / f"{n}.npy", t[n])
    em.save_npy(out / "long" / "logits.npy", logits(model, long_ids))

    # The field matters: GPT-2's default in its place changes the logits (reorder excepted).
    default = build({k: GPT2Config().to_dict()[k] for k in overrides}, seed)
    if "tie_word_embeddings" in overrides:  # the default ties: the head becomes wte
        assert default.lm_head.weight is default.transformer.wte.weight
    moved = float((logits(default, short_ids) - t["logits"]).abs().max())
    if name == "reorder":
        assert moved < 1e-4, f"reorder changed the float32 logits by {moved}, more than rounding"
    else:
        assert moved > 1e-3, f"{name}: the field barely matters ({moved})"
    std = float(t["logits"].std())
    assert std > 1.0, f"{name}: logits too flat (std {std})"
    return {"name": name, "changed": overrides, "config": em.config_summary(model.config),
            "logits_moved_by_the_change": round(moved, 4)}, names


def main():
    if OUT.exists():
        shutil.rmtree(OUT)
    g = torch.Generator().manual_seed(SEED)
    short_ids = torch.randint(0, BASE["vocab_size"], (SHORT,), generator=g).tolist()
    long_ids = torch.randint(0, BASE["vocab_size"], (LONG,), generator=g).tolist()
    variants = []
    for k, (name, overrides) in enumerate(VARIANTS):
        v, names = write_variant(name, overrides, SEED + k, short_ids, long_ids)
        variants.append(v)
    for v in variants:
        em.pack_npz(OUT / v["name"] / "short")  # <variant>/short.npz
    em.write_json(OUT / "manifest.json", {
        "versions": {"torch": torch.__version__, "transformers": em.transformers.__version__,
                     "numpy": np.__version__},
        "script": "python_ref/variants.py",
        "load": "GPT2LMHeadModel.from_pretrained(dir, attn_implementation='eager', dtype=torch.float32).eval()",
        "prompts": {"short": short_ids, "long": long_ids},
        "layout": "<variant>/short.npz holds <tensor>.npy: every step for the short prompt (as golden/reference); "
                  "<variant>/long/logits.npy: the logits of the long prompt",
        "variants": variants,
        "tensors": names,
    })
    total = sum(f.stat().st_size for f in OUT.rglob("*") if f.is_file())
    for v in variants:
        print(f"  {v['name']}: {v['changed']}, logits moved by {v['logits_moved_by_the_change']}")
    print(f"golden/variants: {total / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
