"""Make a drafter's reduced draft vocabulary (FR-Spec's frequency-ranked draft vocabulary; EAGLE-3's
`draft_vocab_size`): the --size most frequent tokens of an equal mix of the target's own answers (the response
tokens of `scripts/make_train_data.py --source generated` data, DATA/train) and a text corpus (default: the Python
standard library's source: code, docstrings, the interpreter's documentation topics). The answers say what this
target writes; the corpus ranks the many tokens a few hundred answers never show. Ties, and tokens seen in
neither, rank by token id.

    python -m dflash_trt.train.draft_vocab --data DATA --size 8192 --out DRAFTER_DIR [--target DIR|embedded]

Writes DRAFTER_DIR/draft_vocab.json ({"token_ids": [...], "size", "coverage", "source"}; coverage: the share of
response tokens inside the vocabulary, on DATA/train and on the held-out answers of DATA/val). The torch runners
then run the drafts' LM head over these rows only, the other tokens' logits -inf: lossless (drafts are
proposals), a smaller head pass, and a drafted position whose target token is outside the vocabulary is never
accepted.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

from dflash_trt.atomic import write_text_atomically
from dflash_trt.config import DRAFT_VOCAB_FILE, read_json
from dflash_trt.errors import UserError
from dflash_trt.train.prompts import stdlib_files
from dflash_trt.train.recipe import resolve_target
from dflash_trt.train.shards import read_shard, shard_files


def response_counts(directory: Path) -> Counter:
    """How often each token id is a response label (from each sequence's first anchor on) in DIR's shards."""
    counts: Counter = Counter()
    for path in shard_files(directory):
        for seq in read_shard(path, None):
            counts.update(seq.labels[seq.start :].tolist())
    return counts


def text_counts(tokenizer, files: list[Path]) -> Counter:
    """How often each token id occurs in the tokenized text of `files`."""
    counts: Counter = Counter()
    for path in files:
        counts.update(tokenizer.encode(path.read_text(errors="ignore"), add_special_tokens=False))
    return counts


def ranked(answers: Counter, corpus: Counter, vocab_size: int) -> list[int]:
    """Every token id, most frequent first in the equal mix of the two frequency tables, then by id."""
    n_answers, n_corpus = sum(answers.values()) or 1, sum(corpus.values()) or 1
    return sorted(range(vocab_size), key=lambda t: (-(answers[t] / n_answers + corpus[t] / n_corpus), t))


def coverage(counts: Counter, vocab: set[int]) -> float:
    """The share of counted tokens inside `vocab`."""
    return sum(n for token, n in counts.items() if token in vocab) / sum(counts.values())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m dflash_trt.train.draft_vocab",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", type=Path, required=True, help="a make_train_data.py --source generated directory")
    p.add_argument("--size", type=int, default=8192, help="tokens in the draft vocabulary (default 8192)")
    p.add_argument("--out", type=Path, required=True, help=f"the drafter directory ({DRAFT_VOCAB_FILE} goes there)")
    p.add_argument("--target", default="embedded", help="the target (its tokenizer reads the corpus)")
    p.add_argument(
        "--corpus", type=Path, nargs="+", help="text files for the corpus (default: the Python standard library)"
    )
    args = p.parse_args(argv)
    try:
        config = args.out / "config.json"
        if not config.is_file():
            raise UserError(f"{args.out}: no config.json; pass the drafter's directory as --out")
        vocab_size = read_json(config).get("vocab_size")
        if not isinstance(vocab_size, int) or vocab_size < 2:
            raise UserError(f"{config}: field 'vocab_size' is {vocab_size!r}; a drafter config names its vocab size")
        if not 1 <= args.size < vocab_size:
            raise UserError(f"--size {args.size}: pick 1..{vocab_size - 1} (below the vocab size of {config})")
        answers = response_counts(args.data / "train")
        held_out = response_counts(args.data / "val") if (args.data / "val").is_dir() else None
        files = args.corpus or stdlib_files()
        missing = [f for f in files if not f.is_file()]
        if missing:
            raise UserError(f"{missing[0]}: --corpus file not found")
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(resolve_target(args.target)))
        tokenizer.model_max_length = sys.maxsize  # whole files are counted, never run through the model
        corpus = text_counts(tokenizer, files)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    vocab = set(ranked(answers, corpus, vocab_size)[: args.size])
    corpus_name = "--corpus" if args.corpus else f"the Python {sys.version.split()[0]} standard library's source"
    found = {"train": round(coverage(answers, vocab), 5)}
    if held_out:
        found["heldout"] = round(coverage(held_out, vocab), 5)
    doc = {
        "token_ids": sorted(vocab),
        "size": args.size,
        "coverage": found,
        "source": f"equal mix of the response tokens of {args.data.name}/train ({sum(answers.values())} tokens) "
        f"and {corpus_name} ({sum(corpus.values())} tokens; files: {len(files)})",
    }
    write_text_atomically(args.out / DRAFT_VOCAB_FILE, json.dumps(doc) + "\n")
    print(f"wrote {args.out / DRAFT_VOCAB_FILE}: {args.size} tokens, coverage of the answers {found}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
