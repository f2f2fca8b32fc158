"""The tokenizer of the built-in random models: a character-level CLIP BPE written without a hub.

transformers' CLIPTokenizer needs a vocab and a merges file; ``build_tiny_tokenizer`` writes both. Used by
``sdtune.models.presets`` (tiny, tiny-v, tiny-xl), ``sdtune.models.real`` (real-shape presets) and the toy world.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path


def _byte_symbols() -> list[str]:
    """The 256 printable stand-ins byte-level BPE uses for raw bytes (printable bytes map to themselves)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(extra)) for b in range(256)]


def _byte_level_vocab() -> tuple[dict[str, int], list[str]]:
    """A character-level CLIP BPE vocabulary: every byte symbol, alone and word-final, plus a few merges.

    transformers' CLIPTokenizer needs a vocab and merges file; without a hub we write our own. Words become
    characters, which is all a random tiny model needs.
    """
    symbols = _byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols]
    merges: list[str] = []
    for word in ("a", "photo", "of", "sks", "person", "dog", "the"):
        if len(word) < 2:
            continue
        current = word[0]
        for i, ch in enumerate(word[1:], start=1):
            nxt = ch + ("</w>" if i == len(word) - 1 else "")
            merges.append(f"{current} {nxt}")
            current = current + nxt
            if current not in tokens:
                tokens.append(current)
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(tokens))}
    return vocab, list(dict.fromkeys(merges))


def build_tiny_tokenizer(folder: Path | None = None):
    """Write a CLIP tokenizer's files into ``folder`` (or a temp dir) and load it from there."""
    from transformers import CLIPTokenizer

    folder = Path(folder or tempfile.mkdtemp(prefix="sdtune-tok-"))
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = _byte_level_vocab()
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    # transformers 5 ignores vocab_file=/merges_file= keywords: pass positional paths.
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77)
