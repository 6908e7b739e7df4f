"""Perplexity references: transformers' GPT2LMHeadModel scoring texts in sliding windows.

    python3 python_ref/perplexity.py                       # golden/model -> golden/reference/perplexity.json
                                                           # (export_model.py runs this too)
    python3 python_ref/perplexity.py --model DIR --out OUT/perplexity.json --ids-file IDS.json

The trained model's reference (golden/kjv-gpt2/perplexity.json) scores the first 1200 tokens of
the validation slice that python_ref/train_tiny.py holds out (the last 2% of the KJV token stream):

    python3 python_ref/perplexity.py --model models/kjv-gpt2 --out golden/kjv-gpt2/perplexity.json \
        --ids-file VAL_1200.json --strides 256,128 --source "..."

Windows as in the transformers documentation ("Perplexity of fixed-length models"): a window of
at most n_positions tokens starts every `stride` tokens; each window scores only the tokens no
earlier window scored, each from the prediction at the position before it (so the first token of
the text is never scored). The sum of -log p is accumulated in float64 over the exact tokens
scored. (The documentation's own loop weights each window's mean loss by the number of valid
labels minus one, which is off by one token per window after the first; we count exactly, and so
does src/perplexity.rs.)
"""

import argparse
import json
import math
from pathlib import Path

import torch
import transformers

ROOT = Path(__file__).resolve().parent.parent

# Public-domain prose (Lewis Carroll, Alice's Adventures in Wonderland, chapter 1).
TEXT = (
    "Alice was beginning to get very tired of sitting by her sister on the bank, and of having "
    "nothing to do: once or twice she had peeped into the book her sister was reading, but it had "
    "no pictures or conversations in it, \"and what is the use of a book,\" thought Alice \"without "
    "pictures or conversations?\" So she was considering in her own mind (as well as she could, for "
    "the hot day made her feel very sleepy and stupid), whether the pleasure of making a "
    "daisy-chain would be worth the trouble of getting up and picking the daisies, when suddenly a "
    "White Rabbit with pink eyes ran close by her. There was nothing so very remarkable in that; "
    "nor did Alice think it so very much out of the way to hear the Rabbit say to itself, \"Oh "
    "dear! Oh dear! I shall be late!\" (when she thought it over afterwards, it occurred to her "
    "that she ought to have wondered at this, but at the time it all seemed quite natural); but "
    "when the Rabbit actually took a watch out of its waistcoat-pocket, and looked at it, and then "
    "hurried on, Alice started to her feet, for it flashed across her mind that she had never "
    "before seen a rabbit with either a waistcoat-pocket, or a watch to take out of it, and burning "
    "with curiosity, she ran across the field after it, and fortunately was just in time to see it "
    "pop down a large rabbit-hole under the hedge."
)


def windows(n, window, stride):
    begin = 0
    while True:
        end = min(begin + window, n)
        yield begin, end
        if end == n:
            return
        begin += stride


@torch.inference_mode()
def score(model, ids, stride):
    window = model.config.n_positions
    nll_sum, tokens, scored_until = 0.0, 0, 1
    for begin, end in windows(len(ids), window, stride):
        logits = model(torch.tensor([ids[begin:end]])).logits[0].double()
        logp = torch.log_softmax(logits, dim=-1)
        for target in range(max(scored_until, begin + 1), end):
            nll_sum -= logp[target - begin - 1, ids[target]].item()
            tokens += 1
        scored_until = end
    return nll_sum, tokens


def write_reference(model_dir="golden/model", out="golden/reference/perplexity.json",
                    ids=None, source=None, strides=None):
    """Score `ids` (default: the Alice text tokenized) with the model in `model_dir`, write `out`."""
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model_dir = Path(model_dir)
    model = transformers.GPT2LMHeadModel.from_pretrained(
        ROOT / model_dir if not model_dir.is_absolute() else model_dir,
        attn_implementation="eager", dtype=torch.float32).eval()
    if ids is not None:
        source = source or "token ids from a JSON file"
    else:
        tok = transformers.GPT2TokenizerFast.from_pretrained(ROOT / model_dir if not model_dir.is_absolute() else model_dir)
        ids = tok(TEXT)["input_ids"]
        source = "Alice's Adventures in Wonderland, chapter 1 (public domain), first paragraphs"
    n = model.config.n_positions
    strides = strides or [n, max(1, n // 3)]
    cases = []
    for stride in strides:
        nll_sum, tokens = score(model, ids, stride)
        cases.append({"stride": stride, "nll_sum": nll_sum, "tokens": tokens,
                      "mean_nll": nll_sum / tokens, "perplexity": math.exp(nll_sum / tokens)})
        print(f"stride {stride}: {tokens} tokens, loss {nll_sum / tokens:.6f}, ppl {math.exp(nll_sum / tokens):.4f}")
    out = ROOT / out if not Path(out).is_absolute() else Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "model": str(model_dir), "source": source, "n_positions": n, "ids": ids, "cases": cases,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }, indent=1) + "\n")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="golden/model")
    p.add_argument("--out", default="golden/reference/perplexity.json")
    p.add_argument("--ids-file", help="JSON list of token ids to score instead of the built-in text")
    p.add_argument("--source", help="how the ids were made (recorded in the output)")
    p.add_argument("--strides", default=None, help="comma-separated strides (default: n_positions and a third of it)")
    args = p.parse_args()
    ids = json.loads(Path(args.ids_file).read_text()) if args.ids_file else None
    strides = [int(s) for s in args.strides.split(",")] if args.strides else None
    write_reference(args.model, args.out, ids, args.source, strides)


if __name__ == "__main__":
    main()
