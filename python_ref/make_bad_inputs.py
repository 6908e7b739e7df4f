"""Write the small model directories that tests/bad_input.rs and tests/mutation.rs read.

Run from anywhere (after `pip install -r python_ref/requirements.txt`):

    python3 python_ref/make_bad_inputs.py

Output, all in golden/bad/ (about 100 KB in total). Every directory holds a
`config.json` of one tiny, non-square GPT-2 (vocab 11, 7 positions, n_embd 8,
2 heads, 2 blocks) and its weights in both formats:

* tiny/: a valid model. `model.safetensors` with the keys of the original
  GPT-2 files (no prefix, the causal-mask buffers `h.{i}.attn.bias` included);
  `pytorch_model.bin` as transformers 4.x saved it (zip, `transformer.`
  prefix, a tied `lm_head.weight` sharing wte's storage, uint8 masks).
* nan/: the same weights with one NaN in `h.1.mlp.c_fc.weight`
  (safetensors and zip .bin).
* inf/: the same weights with -inf in `wpe.weight` (safetensors, and a
  legacy non-zip .bin as the 2019 GPT-2 files are).
* mismatch/: weights that do not fit config.json: `h.0.attn.c_attn.weight`
  stored transposed ([24, 8] instead of [8, 24]), `h.1.ln_2.bias` missing,
  and an unexpected `h.0.attn.c_attn.lora_A`.

The weights are random with a fixed seed; running the script twice gives
byte-identical files (the legacy writer is made deterministic by
make_checkpoints.legacy_bytes).
"""

import json
import sys
from collections import OrderedDict
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_checkpoints import legacy_bytes  # noqa: E402

OUT = Path(__file__).resolve().parent.parent / "golden" / "bad"

CONFIG = OrderedDict(
    activation_function="gelu_new",
    layer_norm_epsilon=1e-05,
    model_type="gpt2",
    n_embd=8,
    n_head=2,
    n_inner=None,
    n_layer=2,
    n_positions=7,
    vocab_size=11,
)


def tiny_weights():
    """Parameters of the tiny GPT-2, keys as in the original GPT-2 files."""
    g = torch.Generator().manual_seed(6)
    c, f, p, v = CONFIG["n_embd"], 4 * CONFIG["n_embd"], CONFIG["n_positions"], CONFIG["vocab_size"]
    rand = lambda *shape: torch.randn(*shape, generator=g) * 0.5  # noqa: E731
    sd = OrderedDict()
    sd["wte.weight"] = rand(v, c)
    sd["wpe.weight"] = rand(p, c)
    for i in range(CONFIG["n_layer"]):
        sd[f"h.{i}.ln_1.weight"] = 1 + rand(c)
        sd[f"h.{i}.ln_1.bias"] = rand(c)
        sd[f"h.{i}.attn.c_attn.weight"] = rand(c, 3 * c)
        sd[f"h.{i}.attn.c_attn.bias"] = rand(3 * c)
        sd[f"h.{i}.attn.c_proj.weight"] = rand(c, c)
        sd[f"h.{i}.attn.c_proj.bias"] = rand(c)
        sd[f"h.{i}.ln_2.weight"] = 1 + rand(c)
        sd[f"h.{i}.ln_2.bias"] = rand(c)
        sd[f"h.{i}.mlp.c_fc.weight"] = rand(c, f)
        sd[f"h.{i}.mlp.c_fc.bias"] = rand(f)
        sd[f"h.{i}.mlp.c_proj.weight"] = rand(f, c)
        sd[f"h.{i}.mlp.c_proj.bias"] = rand(c)
    sd["ln_f.weight"] = 1 + rand(c)
    sd["ln_f.bias"] = rand(c)
    return sd


def with_float_masks(sd):
    """The original GPT-2 safetensors layout: float32 causal masks included."""
    out = OrderedDict(sd)
    p = CONFIG["n_positions"]
    for i in range(CONFIG["n_layer"]):
        out[f"h.{i}.attn.bias"] = torch.tril(torch.ones(1, 1, p, p))
    return out


def transformers_4x(sd):
    """What transformers 4.x's save_pretrained put in pytorch_model.bin."""
    out = OrderedDict()
    p = CONFIG["n_positions"]
    for key, t in sd.items():
        out[f"transformer.{key}"] = t
        if key.endswith("ln_1.bias"):
            i = key.split(".")[1]
            out[f"transformer.h.{i}.attn.bias"] = torch.tril(torch.ones(1, 1, p, p, dtype=torch.uint8))
            out[f"transformer.h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    out["lm_head.weight"] = out["transformer.wte.weight"]  # one storage, as tied weights are saved
    return out


def write_dir(name, safetensors_sd, bin_bytes_or_sd):
    d = OUT / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps(CONFIG, indent=2) + "\n")
    save_file({k: t.contiguous() for k, t in safetensors_sd.items()}, d / "model.safetensors")
    if isinstance(bin_bytes_or_sd, bytes):
        (d / "pytorch_model.bin").write_bytes(bin_bytes_or_sd)
    else:
        torch.save(bin_bytes_or_sd, d / "pytorch_model.bin")


def main():
    sd = tiny_weights()
    write_dir("tiny", with_float_masks(sd), transformers_4x(sd))

    nan = OrderedDict((k, t.clone()) for k, t in sd.items())
    nan["h.1.mlp.c_fc.weight"][3, 17] = float("nan")
    write_dir("nan", nan, transformers_4x(nan))

    inf = OrderedDict((k, t.clone()) for k, t in sd.items())
    inf["wpe.weight"][2, 5] = float("-inf")
    write_dir("inf", inf, legacy_bytes(inf))

    bad = OrderedDict((k, t.clone()) for k, t in sd.items())
    bad["h.0.attn.c_attn.weight"] = bad["h.0.attn.c_attn.weight"].t().contiguous()
    del bad["h.1.ln_2.bias"]
    bad["h.0.attn.c_attn.lora_A"] = torch.zeros(8, 2)
    write_dir("mismatch", bad, bad)

    for path in sorted(OUT.rglob("*")):
        if path.is_file():
            print(f"{path.stat().st_size:6d}  {path.relative_to(OUT.parent.parent)}")


if __name__ == "__main__":
    main()
