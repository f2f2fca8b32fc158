"""What a run's data stream is built from, recorded in every checkpoint so a resume can tell the data changed.

The saved data position counts examples of one stream; the stream is fixed by the config (refused on resume when
it changes, ``sdtune.config_resume``) and by the files the config points at, which no config comparison sees.
So each checkpoint carries a record of those files: per subset (train folders and class images) every image's
listed name and a digest of its bytes, a digest of its captions when the captions are read (a fixed
DreamBooth prompt is config), and with ``data.masked_loss`` a digest of its loss mask (the mask file's bytes, or
the pixels of the image's alpha channel: :func:`sdtune.data.masks.mask_digest`; class images train unmasked).
Bytes cover everything derived from them: pixels, EXIF orientation, size and so the aspect-ratio bucket;
captions cover ``metadata.jsonl`` rows and ``.txt`` files alike. A record made before masks were recorded has no
``masks`` entry: its masks are not compared (never reported as changed).

Cheap: nothing is decoded but alpha-channel masks; each file is hashed once per process (:func:`content_hash`,
the sha256 the latent cache keys entries by, so a cached run hashes each image once). Digests are shortened to 16
hex digits (64 bits): they tell versions of one file apart, they are not a security boundary.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from sdtune.config import DataConfig
from sdtune.data.folders import read_folder
from sdtune.data.images import content_hash
from sdtune.data.masks import mask_digest
from sdtune.data.subsets import subsets_from_config
from sdtune.words import counted, plural

VERSION = 1


def _short(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _labels(data: DataConfig) -> list[str]:
    """The config key of each subset, in the order ``subsets_from_config`` gives them (for messages)."""
    labels = [key for key in ("train_dir", "instance_dir") if getattr(data, key) is not None]
    labels = [f"data.{key} ({getattr(data, key)})" for key in labels]
    labels += [f"data.subsets[{i}] ({s.path})" for i, s in enumerate(data.subsets)]
    if data.with_prior_preservation:
        labels.append(f"class images data.class_dir ({data.class_dir})")
    return labels


def stream_record(data: DataConfig) -> dict[str, Any]:
    """The record of the files a stream built from ``data`` reads (JSON-able; see the module docstring)."""
    subsets = []
    for label, subset in zip(_labels(data), subsets_from_config(data), strict=True):
        images: dict[str, str] = {}
        captions: dict[str, str] = {}
        masks: dict[str, str] = {}
        masked = data.masked_loss and subset.role != "class"  # class images train with all-ones masks
        for record in read_folder(subset.path).records:
            try:
                images[record.name] = content_hash(record.path)[:16]
            except OSError:
                images[record.name] = "unreadable"
            if subset.prompt is None:
                captions[record.name] = _short(json.dumps(list(record.captions), ensure_ascii=False))
            if masked:
                masks[record.name] = mask_digest(record.path, data.mask_dir)
        entry: dict[str, Any] = {"subset": label, "images": images, "captions": captions}
        if masked:
            entry["masks"] = masks
        subsets.append(entry)
    return {"version": VERSION, "subsets": subsets}


def _remasked(was: dict[str, Any], now: dict[str, Any], names: set[str]) -> list[str]:
    """Images of ``names`` whose mask changed; none when either record has no masks (an older checkpoint's, or
    masked_loss switched, which the config comparison refuses on its own)."""
    if "masks" not in was or "masks" not in now:
        return []
    return sorted(n for n in names if was["masks"].get(n) != now["masks"].get(n))


def _names(names: list[str]) -> str:
    """The first four names (each once), then "..."."""
    unique = list(dict.fromkeys(names))
    return ", ".join(unique[:4]) + (", ..." if len(unique) > 4 else "")


def record_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """One line per subset whose files changed between two records, e.g.
    ``data.train_dir (photos): 2 images added, 1 removed, 1 edited, 1 caption changed, 1 mask changed (a.png,
    b.png, ...)``; a changed mask is named as "the mask of IMAGE" (the record keys it by its image: the file may be
    in data.mask_dir under any image suffix, or the image's own alpha channel)."""
    lines = []
    before = {s["subset"]: s for s in old.get("subsets", [])}
    for subset in new["subsets"]:
        was = before.pop(subset["subset"], None)
        if was is None:
            lines.append(f"{subset['subset']}: not in the checkpoint's record")
            continue
        a, b = was["images"], subset["images"]
        added = sorted(set(b) - set(a))
        removed = sorted(set(a) - set(b))
        edited = sorted(n for n in set(a) & set(b) if a[n] != b[n])
        recaptioned = sorted(n for n in set(a) & set(b) if was["captions"].get(n) != subset["captions"].get(n))
        remasked = _remasked(was, subset, set(a) & set(b))
        parts = [f"{counted(len(added), 'image')} added" if added else "",
                 f"{counted(len(removed), 'image')} removed" if removed else "",
                 f"{counted(len(edited), 'image')} edited (other bytes: pixels, size or bucket may differ)"
                 if edited else "",
                 f"{counted(len(recaptioned), 'caption')} changed" if recaptioned else "",
                 f"{counted(len(remasked), 'mask')} changed (the {plural(len(remasked), 'mask', 'masks')} of "
                 f"{_names(remasked)}: data.mask_dir or the alpha channel)" if remasked else ""]
        named = [*added, *removed, *edited, *recaptioned]
        if any(parts):
            lines.append(f"{subset['subset']}: {', '.join(p for p in parts if p)}"
                         + (f" ({_names(named)})" if named else ""))
    lines += [f"{label}: no longer read" for label in before]
    return lines
