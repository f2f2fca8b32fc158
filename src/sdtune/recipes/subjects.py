"""The subjects of ``sdtune personalize``: read from a CSV, one result file each, one summary table for all.

``SUBJECTS.csv`` has a header and one row per person::

    name,photos,token,class
    alice,photos/alice,<alice>,woman
    bob,photos/bob,<bob>,man

``photos`` is a folder, relative to the CSV file's folder unless absolute. ``name`` becomes the subject's folder
``OUT/<name>/``: names that differ only in case are refused (one folder on macOS and Windows disks). Each
subject's outcome is written to ``OUT/<name>/subject.json`` by the process that trained it; the summary is built
from those files, so it is the same whichever process wrote them and survives reruns.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sdtune.atomic import atomic_write_json, atomic_write_text
from sdtune.errors import ConfigError, SdtuneError
from sdtune.run_folder import read_json
from sdtune.words import counted

if TYPE_CHECKING:
    from sdtune.config import RunConfig

SUBJECT_FILE = "subject.json"
COLUMNS = {"name": ("name", "subject"), "photos": ("photos", "folder", "instance_dir", "images"),
           "token": ("token", "instance_token"), "class": ("class", "class_name", "class_noun")}
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
SUMMARY_FIELDS = ("subject", "status", "steps", "final_loss", "seconds", "attempts", "node", "device", "output",
                  "note")
EVAL_FIELDS = ("fidelity", "composite", "picked_step")  # with --prompts: `sdtune pick`'s numbers per subject


@dataclass(frozen=True)
class Subject:
    name: str  # also its folder name under OUT/
    photos: Path
    token: str  # the rare token that will mean this person, e.g. "sks"
    class_name: str  # what the person is, e.g. "woman": prompts are "a photo of sks woman" / "a photo of a woman"

    def fill(self, text: str) -> str:
        """Put this subject into a prompt template (``{token}``, ``{class}``, ``{name}``)."""
        return text.replace("{token}", self.token).replace("{class}", self.class_name).replace("{name}", self.name)


def read_subjects(path: Path) -> list[Subject]:
    """Parse and check the subjects CSV; every problem is reported at once, with its line number."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise ConfigError(f"cannot read subjects file {path}: {exc.strerror or exc}") from None
    first = text.split("\n", 1)[0]
    # a spreadsheet's "CSV" in many locales (Excel: German, French...) separates with ';', a copy from one with tabs
    delimiter = next((d for d in (";", "\t") if d in first), ",") if "," not in first else ","
    reader = csv.DictReader(io.StringIO(text), delimiter=delimiter)
    header = {(h or "").strip().lower(): h for h in reader.fieldnames or []}
    columns: dict[str, str] = {}
    for key, aliases in COLUMNS.items():
        found = next((header[a] for a in aliases if a in header), None)
        if found is None:
            raise ConfigError(f"{path}: the header needs a '{key}' column (columns: name,photos,token,class; "
                              f"found: {', '.join(reader.fieldnames or []) or 'none'})")
        columns[key] = found
    subjects, problems = [], []
    seen: dict[str, tuple[str, int]] = {}  # lower-cased name -> (name, line)
    for line, row in enumerate(reader, start=2):
        values = {key: (row.get(col) or "").strip() for key, col in columns.items()}
        if not any(values.values()):
            continue
        missing = [key for key, value in values.items() if not value]
        if missing:
            problems.append(f"line {line}: empty {', '.join(missing)}")
            continue
        if not NAME.match(values["name"]):
            problems.append(f"line {line}: name '{values['name']}' must be letters, digits, '.', '_' or '-' (it "
                            "becomes a folder name)")
        elif (first := seen.get(values["name"].lower())) is not None:
            problems.append(f"line {line}: the name '{values['name']}' is used twice (line {first[1]})"
                            if first[0] == values["name"] else
                            f"line {line}: the name '{values['name']}' differs from '{first[0]}' (line {first[1]}) "
                            "only in case: on a case-insensitive disk (macOS, Windows) both are one folder; rename "
                            "one")
        seen.setdefault(values["name"].lower(), (values["name"], line))
        photos = Path(values["photos"]).expanduser()
        photos = photos if photos.is_absolute() else (path.parent / photos)
        if not photos.is_dir():
            problems.append(f"line {line}: the photo folder {photos} of '{values['name']}' "
                            f"{'is a file' if photos.exists() else 'does not exist'}")
        subjects.append(Subject(values["name"], photos.resolve(), values["token"], values["class"]))
    if problems:
        raise ConfigError(f"{path}:\n  " + "\n  ".join(problems))
    if not subjects:
        raise ConfigError(f"{path} lists no subjects")
    return subjects


@dataclass
class SubjectOutcome:
    """What happened to one subject (``OUT/<name>/subject.json``)."""

    subject: str
    status: str  # finished | failed | interrupted | pending
    steps: int | None = None
    final_loss: float | None = None
    seconds: float | None = None
    output: str = ""
    attempts: int = 0  # training attempts of the last personalize run (a retry after a crash is one more)
    node: str = ""  # the machine that trained it last
    device: str = ""  # cuda:N or cpu
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)  # EVAL_FIELDS with --prompts

    def save(self, run_dir: Path) -> None:
        atomic_write_json(Path(run_dir) / SUBJECT_FILE, asdict(self))

    @classmethod
    def load(cls, run_dir: Path, name: str) -> SubjectOutcome:
        data = read_json(Path(run_dir) / SUBJECT_FILE)
        if not data:
            return cls(name, "pending", note="no result: its process did not reach it")
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)

    def row(self) -> dict[str, str]:
        loss = f"{self.final_loss:.4f}" if self.final_loss is not None else ""
        seconds = f"{self.seconds:.1f}" if self.seconds is not None else ""
        row = {"subject": self.subject, "status": self.status, "steps": "" if self.steps is None else str(self.steps),
               "final_loss": loss, "seconds": seconds, "attempts": str(self.attempts or ""), "node": self.node,
               "device": self.device, "output": self.output, "note": self.note}
        for key in EVAL_FIELDS:
            value = self.extra.get(key)
            row[key] = f"{value:.4f}" if isinstance(value, float) else "" if value is None else str(value)
        return row


def _fields(outcomes: list[SubjectOutcome]) -> list[str]:
    """The summary's columns: the eval ones only when some subject has them."""
    evaluated = any(k in o.extra for o in outcomes for k in EVAL_FIELDS)
    return [*SUMMARY_FIELDS[:-2], *(EVAL_FIELDS if evaluated else ()), *SUMMARY_FIELDS[-2:]]


def summary_markdown(outcomes: list[SubjectOutcome]) -> str:
    rows, fields = [o.row() for o in outcomes], _fields(outcomes)
    lines = ["| " + " | ".join(fields) + " |", "|" + "---|" * len(fields)]
    for row in rows:
        cells = [row[f].replace("|", "\\|").replace("\n", " ") for f in fields]
        lines.append("| " + " | ".join(cells) + " |")
    done = sum(o.status == "finished" for o in outcomes)
    lines += ["", f"{done} of {counted(len(outcomes), 'subject')} finished."]
    return "\n".join(lines) + "\n"


def write_summary(out_dir: Path, outcomes: list[SubjectOutcome]) -> tuple[Path, Path]:
    """``OUT/summary.csv`` and ``OUT/summary.md``: one row per subject, in the CSV's order."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=_fields(outcomes), extrasaction="ignore")
    writer.writeheader()
    for outcome in outcomes:
        writer.writerow(outcome.row())
    atomic_write_text(out_dir / "summary.csv", buffer.getvalue())
    atomic_write_text(out_dir / "summary.md", summary_markdown(outcomes))
    return out_dir / "summary.csv", out_dir / "summary.md"


def check_tokens(subjects: list[Subject], configs: list[RunConfig], model: Path | str,
                 revision: str | None = None) -> None:
    """Refuse tokens the concept's tokenizer splits into several pieces: the person would be learned as a mix of
    common sub-words (``zwx`` -> ``z``, ``w``, ``x``), which shifts every prompt using them. A pivotal template
    (``train.textual_inversion``) adds each person's token as a new one instead: there a token the vocabulary
    already has is refused, as an entry (diffusers' ``load_textual_inversion`` would refuse its embedding) or as a
    whole word (``sks``, ``man``: the new token would replace the word in every prompt, inside other words too,
    "woman" included), before any person trains. One line each."""
    from sdtune.data.captions import load_tokenizer

    try:
        tokenizer = load_tokenizer(str(model), revision)
    except (SdtuneError, OSError, ValueError):
        return  # no tokenizer files to read: training reports the model itself
    from sdtune.models.embeddings import check_token, is_vocabulary_word

    def taken(token: str, num_vectors: int) -> bool:
        try:
            check_token(token, tokenizer, num_vectors)
        except ConfigError:
            return True
        return is_vocabulary_word(token, tokenizer)

    problems = []
    for subject, cfg in zip(subjects, configs, strict=True):
        learned = cfg.train.textual_inversion
        if learned is not None:
            if taken(subject.token, learned.num_vectors):
                problems.append(f"{subject.name}: token '{subject.token}' is already a word of the concept's "
                                f"tokenizer, and pivotal tuning learns a new token: write one it does not have, "
                                f"e.g. <{subject.token.strip('<>')}> (or train.textual_inversion=null for a "
                                "DreamBooth LoRA on the word)")
            continue
        pieces = tokenizer.tokenize(subject.token)
        if len(pieces) > 1:
            shown = ", ".join(p.replace("</w>", "") for p in pieces)
            problems.append(f"{subject.name}: token '{subject.token}' splits into "
                            f"{counted(len(pieces), 'piece')} ({shown}) in "
                            "the concept's tokenizer; choose a rare single-piece token (e.g. sks, ohwx)")
    if problems:
        raise ConfigError("\n".join(problems))


def shared_tokens(subjects: list[Subject]) -> list[str]:
    """A note per token that several people share: each run learns its own, but the embedding files carry the
    token's name (one AUTOMATIC1111 / ComfyUI embeddings folder holds one of them) and one prompt cannot hold two
    of them."""
    by_token: dict[str, list[str]] = {}
    for subject in subjects:
        by_token.setdefault(subject.token, []).append(subject.name)
    return [f"note: {', '.join(names)} share the token '{token}': each person learns its own, but their embedding "
            "files have one name and one prompt cannot tell them apart; give each person a token of its own"
            for token, names in by_token.items() if len(names) > 1]
