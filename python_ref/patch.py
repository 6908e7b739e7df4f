"""Activation patching and head ablation references, with forward hooks on transformers' GPT-2.

    python3 python_ref/patch.py

For golden/model (random weights) and models/kjv-gpt2 (the bundled trained model), writes
golden/patch/<case>/ (about 10 kB in all):

* patch.json: the prompt pair and the sweeps of TransformerLens's get_act_patch_resid_pre and
  get_act_patch_attn_head_out_all_pos, with the metric logit(answer) - logit(wrong) at the last
  position:
  - "clean", "corrupt": the metric of each run;
  - "resid_pre" [n_layer][T]: the corrupted run with the input of block l (the hidden states
    entering transformer.h[l], caught by a forward pre-hook) at position p replaced by the clean
    run's;
  - "head_out" [n_layer][n_head]: the corrupted run with head h's slice of the input of
    h[l].attn.c_proj (its output before the projection, columns h*d:(h+1)*d) replaced by the clean
    run's at every position;
  - "zero_head" [n_layer][n_head]: the clean run with that slice set to zero (zero-ablation);
  - "tokens", "clean_ids", "corrupt_ids", "answer", "wrong" (ids), "ablated": which head
    ablated.npy ablates.
* ablated.npy [T, C]: the final hidden states (after ln_f) of the clean run with head
  `ablated` zeroed.

Eager attention, float32, one thread, deterministic algorithms: running it twice leaves every file
byte-identical.
"""

import sys
from pathlib import Path

import numpy as np
import torch
from transformers import GPT2LMHeadModel, GPT2TokenizerFast

sys.path.insert(0, str(Path(__file__).resolve().parent))
import export_model as em  # noqa: E402  (sets one thread and deterministic algorithms)

CASES = [("model", em.GOLDEN / "model"), ("kjv", em.REPO / "models" / "kjv-gpt2")]
# The answer depends on an earlier word: Pharaoh is king of Egypt, Cyrus of Persia.
CLEAN = "And they came to Pharaoh king of"
CORRUPT = "And they came to Cyrus king of"
ANSWER, WRONG = " Egypt", " Persia"
ABLATED = (1, 2)  # the head whose zero-ablation is stored in full


def load(d):
    model = GPT2LMHeadModel.from_pretrained(d, dtype=torch.float32, attn_implementation="eager")
    return model.eval()


def hidden_arg(args, kwargs):
    return args[0] if args else kwargs["hidden_states"]


def with_hidden(args, kwargs, x):
    if args:
        return (x,) + tuple(args[1:]), kwargs
    return args, {**kwargs, "hidden_states": x}


class Hooks:
    """Forward pre-hooks that record or change the input of a block or of attn.c_proj."""

    def __init__(self):
        self.handles = []

    def block_input(self, model, layer, fn):
        def pre(module, args, kwargs):
            out = fn(hidden_arg(args, kwargs))
            return None if out is None else with_hidden(args, kwargs, out)

        block = model.transformer.h[layer]
        self.handles.append(block.register_forward_pre_hook(pre, with_kwargs=True))

    def c_proj_input(self, model, layer, fn):
        def pre(module, args):
            out = fn(args[0])
            return None if out is None else (out,)

        c_proj = model.transformer.h[layer].attn.c_proj
        self.handles.append(c_proj.register_forward_pre_hook(pre))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


def run(model, ids):
    with torch.no_grad():
        out = model(torch.tensor([ids]), output_hidden_states=True)
    return out.logits[0], out.hidden_states[-1][0]


def sweeps(model, clean, corrupt, answer, wrong):
    cfg = model.config
    L, H, T = cfg.n_layer, cfg.n_head, len(clean)
    d = cfg.n_embd // H
    metric = lambda logits: float(logits[-1, answer] - logits[-1, wrong])  # noqa: E731

    saved = {}
    with Hooks() as hooks:
        for layer in range(L):
            hooks.block_input(model, layer, lambda x, l=layer: saved.__setitem__(("resid", l), x.clone()))
            hooks.c_proj_input(model, layer, lambda x, l=layer: saved.__setitem__(("z", l), x.clone()))
        clean_metric = metric(run(model, clean)[0])
    corrupt_metric = metric(run(model, corrupt)[0])

    def patched(install):
        with Hooks() as hooks:
            install(hooks)
            return metric(run(model, corrupt)[0])

    def patch_position(layer, p):
        def fn(x):
            x = x.clone()
            x[:, p] = saved[("resid", layer)][:, p]
            return x
        return lambda hooks: hooks.block_input(model, layer, fn)

    def patch_head(layer, h):
        def fn(x):
            x = x.clone()
            cols = slice(h * d, (h + 1) * d)
            x[:, :, cols] = saved[("z", layer)][:, :, cols]
            return x
        return lambda hooks: hooks.c_proj_input(model, layer, fn)

    resid_pre = [[patched(patch_position(l, p)) for p in range(T)] for l in range(L)]
    head_out = [[patched(patch_head(l, h)) for h in range(H)] for l in range(L)]

    def zero(layer, h):
        def fn(x):
            x = x.clone()
            x[:, :, h * d:(h + 1) * d] = 0
            return x
        return fn

    def ablate(layer, h):
        with Hooks() as hooks:
            hooks.c_proj_input(model, layer, zero(layer, h))
            return run(model, clean)

    zero_head = [[metric(ablate(l, h)[0]) for h in range(H)] for l in range(L)]
    ablated = ablate(*ABLATED)[1]
    return clean_metric, corrupt_metric, resid_pre, head_out, zero_head, ablated


def main():
    for case, d in CASES:
        tok = GPT2TokenizerFast(str(d / "vocab.json"), str(d / "merges.txt"))
        model = load(d)
        clean, corrupt = tok(CLEAN).input_ids, tok(CORRUPT).input_ids
        assert len(clean) == len(corrupt), (clean, corrupt)
        (answer,), (wrong,) = tok(ANSWER).input_ids, tok(WRONG).input_ids
        clean_m, corrupt_m, resid_pre, head_out, zero_head, ablated = sweeps(
            model, clean, corrupt, answer, wrong
        )
        out = em.GOLDEN / "patch" / case
        em.write_json(out / "patch.json", {
            "clean": clean_m,
            "corrupt": corrupt_m,
            "resid_pre": resid_pre,
            "head_out": head_out,
            "tokens": [tok.decode([i]) for i in clean],
            "clean_text": CLEAN,
            "corrupt_text": CORRUPT,
            "clean_ids": clean,
            "corrupt_ids": corrupt,
            "answer": answer,
            "wrong": wrong,
            "zero_head": zero_head,
            "ablated": list(ABLATED),
        })
        em.save_npy(out / "ablated.npy", ablated)
        print(f"{case}: clean {clean_m:.4f}, corrupt {corrupt_m:.4f}, wrote {out}")


if __name__ == "__main__":
    main()
