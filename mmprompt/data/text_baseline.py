"""How much of a classification task the text alone gives away: a blind baseline.

A logistic regression on word unigrams and bigrams of the texts (no image) is trained on a task's train
split and scored on its validation split. A task that needs the image keeps this near chance::

    python -m mmprompt.data.text_baseline snli_ve --profile cpu
    python -m mmprompt.data.text_baseline vqa --profile cpu
"""

from __future__ import annotations

import argparse
import json
from collections import Counter

import torch

from mmprompt.data.synth import PROFILES, SPLITS, ensure_synthetic, split_path
from mmprompt.data.tsv import read_tsv

TASKS = {  # task: (text fields, label) of a record; a VQA label is its most confident answer
    "snli_ve": (lambda r: [f"h:{r.hypothesis}", f"p:{r.premise}"], lambda r: r.label),
    "vqa": (lambda r: [f"q:{r.question}"], lambda r: max(r.answers, key=r.answers.get)),
}


def _rows(data_dir, task: str, split: str) -> tuple[list[list[str]], list[str]]:
    text_of, label_of = TASKS[task]
    records = list(read_tsv(split_path(data_dir, task, split), task, images="none"))
    return [text_of(r) for r in records], [label_of(r) for r in records]


def ngrams(fields: list[str]) -> set[str]:
    """Unigrams and bigrams of each text field, tagged with the field they come from."""
    out: set[str] = set()
    for field in fields:
        tag, text = field.split(":", 1)
        words = text.split()
        out |= {f"{tag}:{w}" for w in words} | {f"{tag}:{a}_{b}" for a, b in zip(words, words[1:])}
    return out


def blind_accuracy(data_dir, task: str, *, steps: int = 300, seed: int = 0) -> dict[str, float]:
    """Validation accuracy of the text-only classifier, beside majority-class accuracy."""
    if task not in TASKS:
        raise ValueError(f"task={task!r}: allowed {tuple(TASKS)}")
    train_split, val_split = SPLITS[task][0], SPLITS[task][1]
    (tr_x, tr_y), (va_x, va_y) = _rows(data_dir, task, train_split), _rows(data_dir, task, val_split)
    vocab = {g: i for i, g in enumerate(sorted({g for x in tr_x for g in ngrams(x)}))}
    classes = sorted(set(tr_y))

    def features(xs):
        m = torch.zeros(len(xs), len(vocab))
        for r, x in enumerate(xs):
            m[r, [vocab[g] for g in ngrams(x) if g in vocab]] = 1.0
        return m

    torch.manual_seed(seed)
    x, y = features(tr_x), torch.tensor([classes.index(c) for c in tr_y])
    w = torch.zeros(len(vocab), len(classes), requires_grad=True)
    b = torch.zeros(len(classes), requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=0.05)
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ w + b, y) + 1e-4 * w.pow(2).sum()
        loss.backward()
        opt.step()
    with torch.no_grad():
        pred = (features(va_x) @ w + b).argmax(1).tolist()
    hits = [classes[p] == t for p, t in zip(pred, va_y)]
    majority = Counter(tr_y).most_common(1)[0][0]
    return {"accuracy": sum(hits) / len(hits), "majority": sum(t == majority for t in va_y) / len(va_y),
            "n": len(hits), "split": val_split}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m mmprompt.data.text_baseline", description=__doc__.split("\n\n")[0])
    p.add_argument("task", choices=tuple(TASKS))
    p.add_argument("--profile", default="cpu", choices=tuple(PROFILES))
    p.add_argument("--data-dir", default=None, help="generated synthetic data (default: the profile's)")
    args = p.parse_args(argv)
    print(json.dumps(blind_accuracy(args.data_dir or ensure_synthetic(args.profile), args.task), indent=1))


if __name__ == "__main__":
    main()
