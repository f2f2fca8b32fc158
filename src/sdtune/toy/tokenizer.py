"""A CLIP-style byte-level BPE tokenizer built from the toy world's words (nothing downloaded).

Why not the tiny preset's character tokenizer: the toy CLIP should see each world word as one token, as SD's
CLIP sees "dog" or "red", so that a word's meaning lives in one embedding a fine-tune can move. The merges are
learned greedily from the world's vocabulary (each word becomes one token); anything else (typos, new words)
falls back to byte-level pieces, exactly like CLIP's tokenizer. The files are the standard ``vocab.json`` +
``merges.txt``, so ``transformers.CLIPTokenizer`` loads them.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from sdtune.models.tiny_tokenizer import _byte_symbols
from sdtune.toy.world import vocabulary_corpus

MAX_LENGTH = 32  # captions are under 20 tokens; a short context makes every toy model cheaper
SPECIALS = ("<|startoftext|>", "<|endoftext|>")


def learn_merges(words: list[str]) -> list[tuple[str, str]]:
    """Greedy BPE: repeatedly merge the most frequent adjacent pair until every word is one token."""
    pieces = {w: [*w[:-1], w[-1] + "</w>"] for w in dict.fromkeys(words)}
    merges: list[tuple[str, str]] = []
    while True:
        pairs: Counter[tuple[str, str]] = Counter()
        for parts in pieces.values():
            for a, b in zip(parts, parts[1:], strict=False):
                pairs[(a, b)] += 1
        if not pairs:
            return merges
        best = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))[0]  # deterministic tie-break
        merges.append(best)
        for word, parts in pieces.items():
            merged, i = [], 0
            while i < len(parts):
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            pieces[word] = merged


def build_vocab(words: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    symbols = _byte_symbols()
    merges = learn_merges(words)
    tokens = [*symbols, *(s + "</w>" for s in symbols), *(a + b for a, b in merges), *SPECIALS]
    return {tok: i for i, tok in enumerate(dict.fromkeys(tokens))}, merges


def write_tokenizer(folder: Path, words: list[str] | None = None) -> Path:
    """Write vocab.json, merges.txt and the tokenizer config into ``folder`` (a pipeline's ``tokenizer/``)."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = build_vocab(words or vocabulary_corpus())
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n",
                                       encoding="utf-8")
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": MAX_LENGTH, "bos_token": SPECIALS[0],
              "eos_token": SPECIALS[1], "pad_token": SPECIALS[1], "unk_token": SPECIALS[1],
              "do_lower_case": True, "add_prefix_space": False}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    (folder / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": SPECIALS[0], "eos_token": SPECIALS[1], "pad_token": SPECIALS[1], "unk_token": SPECIALS[1]},
        indent=2), encoding="utf-8")
    return folder


def load_tokenizer(folder: Path):
    """Load with transformers (positional paths: transformers 5 ignores vocab_file=/merges_file=)."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=MAX_LENGTH)
