"""/api/datasets: upload photos (files or a zip), thumbnails with captions, edit a caption, `dataset check`.

Uploads are checked before anything reaches the dataset: the request's size (Content-Length, before the body is
read), each file's size, its name (one plain component), every zip member (no ``..``, no absolute path, no
symlink: a zip-slip refuses the whole zip), the zip's total unpacked size, and that each image decodes (Pillow,
with the decompression-bomb limit) — in ``WS/uploads/<tmp>/`` first, moved into ``WS/datasets/<name>/`` only
when it passed. A dataset is the kohya layout sdtune reads (``photo.png`` + ``photo.txt``), or one that
`dataset build` wrote (``metadata.jsonl``).
"""

from __future__ import annotations

import io
import json
import re
import shutil
import stat
import uuid
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

from fastapi import APIRouter, HTTPException, Request, UploadFile
from fastapi.responses import Response
from pydantic import BaseModel

from sdtune.atomic import atomic_write_text
from sdtune.errors import DataError, SdtuneError
from sdtune.jobs.workspace import check_name, inside, relative_name
from sdtune.words import counted

router = APIRouter()
MAX_UPLOAD = 200 * 2**20  # bytes per request (all files together)
MAX_FILE = 50 * 2**20  # bytes per image
MAX_MEMBERS = 2000  # files in one zip
MAX_PIXELS = 80_000_000  # an image larger than this is refused before decoding (decompression bombs)
CAPTION_SUFFIXES = (".txt", ".caption")


def _ws(request: Request) -> Path:
    return request.app.state.workspace


def _limits(request: Request) -> tuple[int, int]:
    return (getattr(request.app.state, "max_upload", MAX_UPLOAD), getattr(request.app.state, "max_file", MAX_FILE))


def _safe_file_name(name: str) -> str:
    """A member or upload's base name made one plain component (spaces and odd characters -> '_')."""
    base = PurePosixPath(name.replace("\\", "/")).name
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", base).lstrip(".")
    if not cleaned or cleaned in (".", ".."):
        raise DataError(f"{name!r} is not a usable file name")
    return cleaned[:120]


def _dataset_summary(ws: Path, folder: Path) -> dict[str, Any]:
    from sdtune.data.folders import read_folder

    reading = read_folder(folder)
    return {"path": relative_name(ws, folder), "name": folder.name, "images": len(reading.records),
            "captioned": sum(1 for r in reading.records if r.captions), "layout": reading.layout}


@router.get("/datasets")
def list_datasets(request: Request) -> list[dict[str, Any]]:
    ws = _ws(request)
    root = ws / "datasets"
    return [_dataset_summary(ws, p) for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".")
            and not p.is_symlink()]


@router.get("/dataset")
def dataset(request: Request, path: str) -> dict[str, Any]:
    """Every image as training reads it (``file`` relative to the dataset), its caption, and the problems found."""
    from sdtune.data.folders import read_folder

    ws = _ws(request)
    folder = inside(ws, path, "dataset")
    if not folder.is_dir():
        raise HTTPException(404, f"no dataset folder {path} in the workspace")
    reading = read_folder(folder)
    return {**_dataset_summary(ws, folder),
            "records": [{"file": r.name, "caption": r.caption or ""} for r in reading.records],
            "problems": [str(p) for p in reading.problems]}


class CaptionEdit(BaseModel):
    path: str
    file: str
    caption: str


@router.put("/dataset/caption")
def edit_caption(request: Request, edit: CaptionEdit) -> dict[str, Any]:
    """Set one image's caption: its sidecar (``photo.txt``), or its row of ``metadata.jsonl``."""
    from sdtune.data.captions import sidecar_for
    from sdtune.data.folders import METADATA, read_folder

    ws = _ws(request)
    folder = inside(ws, edit.path, "dataset")
    image = inside(ws, f"{relative_name(ws, folder)}/{edit.file}", "image")
    reading = read_folder(folder)
    if image not in {r.path.resolve() for r in reading.records}:
        raise SdtuneError(f"{edit.file} is not an image of {edit.path}")
    text = " ".join(edit.caption.split())
    if len(text) > 2000:
        raise SdtuneError("a caption of more than 2000 characters is refused (CLIP reads 77 tokens)")
    metadata = folder / METADATA
    if metadata.is_file():
        rows = [json.loads(line) for line in metadata.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
        name = image.relative_to(folder).as_posix()
        hit = [row for row in rows if row.get("file_name") == name]
        if not hit:
            raise SdtuneError(f"{name} has no row in {METADATA} (one with its file_name is needed)")
        for row in hit:
            row["text"] = text
        atomic_write_text(metadata, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    else:
        sidecar = sidecar_for(image) or image.with_suffix(".txt")
        atomic_write_text(sidecar, text + "\n")
    return {"file": edit.file, "caption": text}


@router.get("/dataset/thumb")
def thumbnail(request: Request, path: str, file: str, size: int = 192) -> Response:
    from PIL import Image

    from sdtune.data.images import open_image

    ws = _ws(request)
    folder = inside(ws, path, "dataset")
    image = inside(ws, f"{relative_name(ws, folder)}/{file}", "image")
    try:
        loaded = open_image(image, max_size=max(16, min(size, 512)), max_pixels=MAX_PIXELS)
    except DataError as exc:
        raise HTTPException(404, str(exc)) from None
    picture = loaded.image if hasattr(loaded, "image") else loaded
    picture.thumbnail((size, size), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    picture.convert("RGB").save(out, "JPEG", quality=85)
    return Response(out.getvalue(), media_type="image/jpeg", headers={"Cache-Control": "no-cache"})


@router.get("/dataset/check")
def check(request: Request, path: str, resolution: int = 512) -> dict[str, Any]:
    """`sdtune dataset check` on the folder: the verdict, problems, and the buckets ``resolution`` will use."""
    from sdtune.data.check import check_folder

    folder = inside(_ws(request), path, "dataset")
    report = check_folder(folder, resolution=max(8, min(resolution, 4096)))
    result = report.to_dict()
    result["folder"] = relative_name(_ws(request), folder)
    result["text"] = report.to_text().replace(str(folder), result["folder"])
    return result


def _member_problem(info: zipfile.ZipInfo) -> str | None:
    name = info.filename
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":") or ".." in parts:
        return f"zip member {name!r} points outside the folder (zip-slip)"
    if stat.S_ISLNK(info.external_attr >> 16):
        return f"zip member {name!r} is a symbolic link"
    return None


def _check_image(path: Path) -> None:
    from sdtune.data.images import open_image

    open_image(path, max_size=64, max_pixels=MAX_PIXELS)  # raises DataError naming the file


def _receive(staging: Path, name: str, stream, limit: int) -> Path:
    """Copy ``stream`` to ``staging/name``, refusing more than ``limit`` bytes (whatever the header claimed)."""
    target = staging / _safe_file_name(name)
    if target.exists():
        raise DataError(f"{name}: two files of the upload have this name")
    size = 0
    with open(target, "wb") as out:
        while chunk := stream.read(1 << 20):
            size += len(chunk)
            if size > limit:
                raise DataError(f"{name} is larger than {limit / 2**20:.3g} MB: refused")
            out.write(chunk)
    return target


def _unzip(staging: Path, upload, limit_file: int, limit_total: int) -> list[Path]:
    try:
        zf = zipfile.ZipFile(upload)
    except zipfile.BadZipFile:
        raise DataError("the .zip is not a readable zip file") from None
    with zf:
        infos = [i for i in zf.infolist() if not i.is_dir()]
        for info in infos:
            problem = _member_problem(info)
            if problem:
                raise DataError(f"{problem}: the zip is refused, nothing was stored")
        if len(infos) > MAX_MEMBERS:
            raise DataError(f"the zip holds {counted(len(infos), 'file')} (at most {MAX_MEMBERS}): refused")
        if sum(i.file_size for i in infos) > limit_total:
            raise DataError(f"the zip unpacks to more than {limit_total // 2**20} MB: refused")
        saved = []
        for info in infos:
            base = PurePosixPath(info.filename.replace("\\", "/")).name
            if base.startswith(".") or "__MACOSX" in info.filename:
                continue
            with zf.open(info) as member:
                saved.append(_receive(staging, base, member, limit_file))
        return saved


@router.post("/datasets/{name}/upload")
async def upload(request: Request, name: str) -> dict[str, Any]:
    """Store uploaded images (and .txt captions), or the images of uploaded zips, in ``WS/datasets/<name>``.

    Returns ``stored`` (file names) and ``refused`` (one line each: which file, why). A zip-slip, a bad zip or an
    oversize request refuses everything.
    """
    from sdtune.data.images import IMAGE_SUFFIXES

    ws = _ws(request)
    check_name(name, "dataset name")
    limit_total, limit_file = _limits(request)
    length = request.headers.get("content-length")
    if length is None:
        raise HTTPException(411, "an upload must say its size (Content-Length)")
    if not length.isdigit() or int(length) > limit_total:
        raise HTTPException(413, f"the upload is larger than {limit_total // 2**20} MB: refused, nothing stored")
    form = await request.form(max_files=MAX_MEMBERS, max_fields=50)
    files = [f for f in form.getlist("files") if isinstance(f, UploadFile | object) and hasattr(f, "filename")]
    if not files:
        raise SdtuneError("no files in the upload (field 'files')")
    staging = ws / "uploads" / uuid.uuid4().hex
    staging.mkdir(parents=True)
    stored: list[str] = []
    refused: list[str] = []
    try:
        received: list[Path] = []
        for upload_file in files:
            filename = upload_file.filename or "file"
            if filename.lower().endswith(".zip"):
                received.extend(_unzip(staging, upload_file.file, limit_file, limit_total))
            else:
                try:
                    received.append(_receive(staging, filename, upload_file.file, limit_file))
                except DataError as exc:
                    refused.append(str(exc))
        folder = inside(ws, f"datasets/{name}", "dataset")
        folder.mkdir(parents=True, exist_ok=True)
        for path in received:
            suffix = path.suffix.lower()
            if suffix in CAPTION_SUFFIXES:
                continue
            if suffix not in IMAGE_SUFFIXES:
                refused.append(f"{path.name}: not an image (png, jpg, webp, ...) or a .txt caption")
                continue
            try:
                _check_image(path)
            except DataError as exc:
                refused.append(str(exc).replace(str(staging) + "/", ""))
                continue
            shutil.move(str(path), folder / path.name)
            stored.append(path.name)
            for caption in (path.with_suffix(s) for s in CAPTION_SUFFIXES):
                if caption.is_file() and caption.stat().st_size <= 10_000:
                    shutil.move(str(caption), folder / caption.name)
    except DataError as exc:
        raise HTTPException(400, str(exc).replace(str(staging) + "/", "")) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {"dataset": f"datasets/{name}", "stored": stored, "refused": refused}
