"""Relevance judgments made by people (grades 0/1/2 on search results): a durable append-only store, one final grade
per (query, item) over judges, inter-judge agreement, and the export to the BEIR layout `vitrine eval` reads.

The server's workbench writes the store and `vitrine judgments export` reads it, so the format lives in the library.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import shutil
import statistics
import threading
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from itertools import combinations
from pathlib import Path
from typing import Any

from vitrine.indexer.durable import fsync_dir, write_durably

GRADES = (0, 1, 2)
JUDGMENTS_FILE = "judgments.jsonl"
PHOTOS_DIR = "photos"
# The export's layout (BEIR): what `vitrine eval --judgments DIR` and the gates read back.
QUERIES_FILE = "queries.jsonl"
QRELS_FILE = "qrels/test.tsv"
AGREEMENT_FILE = "agreement.json"
_SHA = re.compile(r"[0-9a-f]{64}")
_EXT = {"jpeg": "jpg", "tiff": "tif"}


def utc_now() -> str:
    """The `ts` of a judgment made now: ISO-8601 UTC with milliseconds, e.g. "2026-12-06T09:00:00.123Z"."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def photo_sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def query_id(text: str, photo_sha: str) -> str:
    """One id per query as a person means it: case and runs of spaces do not make "Red  Dress" another query."""
    normal = " ".join(text.casefold().split())
    return "q" + hashlib.sha256(f"{normal}\x1f{photo_sha}".encode()).hexdigest()[:16]


def _text(d: Mapping[str, Any], name: str, required: bool = False) -> str:
    value = d.get(name, "")
    if not isinstance(value, str):
        raise ValueError(f"judgment field {name!r} must be a string, got {type(value).__name__}.")
    if required and not value.strip():
        raise ValueError(f"judgment field {name!r} must be a non-empty string.")
    return value


@dataclass(frozen=True)
class Judgment:
    """One person's grade of one item for one query, with the configuration that showed it."""

    ts: str                # ISO-8601 UTC
    tenant: str
    who: str               # the judge: an API key id or a name
    qid: str               # query_id(text, photo)
    text: str              # the query text as typed, may be ""
    photo: str             # sha256 hex of the query photo, or ""
    item: str              # catalog item id
    grade: int             # 0 not relevant, 1 partly, 2 relevant
    config: dict = field(default_factory=dict)  # e.g. {"label": "A", "stages": "full", "fusion": "rrf"}
    bundle_version: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Judgment:
        """Validates one stored or submitted judgment; raises ValueError naming the field. Unknown keys are ignored,
        so a newer server's extra fields do not make an older exporter drop the line."""
        if not isinstance(d, Mapping):
            raise ValueError(f"a judgment must be a JSON object, got {type(d).__name__}.")
        grade = d.get("grade")
        if isinstance(grade, bool) or grade not in GRADES:
            raise ValueError(f"judgment field 'grade' must be 0, 1 or 2, got {grade!r}.")
        config = d.get("config", {})
        if not isinstance(config, Mapping):
            raise ValueError(f"judgment field 'config' must be a JSON object, got {type(config).__name__}.")
        photo = _text(d, "photo")
        if photo and not _SHA.fullmatch(photo):
            raise ValueError("judgment field 'photo' must be the sha256 hex of the query photo, or empty.")
        text = _text(d, "text")
        if not text.strip() and not photo:
            raise ValueError("a judgment's query needs a 'text' or a 'photo'; one with neither cannot be replayed.")
        return cls(ts=_text(d, "ts"), tenant=_text(d, "tenant"), who=_text(d, "who", True), qid=_text(d, "qid", True),
                   text=text, photo=photo, item=_text(d, "item", True), grade=int(grade), config=dict(config),
                   bundle_version=_text(d, "bundle_version"))


def _photo_ext(data: bytes) -> str:
    from PIL import Image

    try:
        fmt = (Image.open(io.BytesIO(data)).format or "bin").lower()
    except Exception:  # noqa: BLE001 - any unreadable photo is still kept; only its extension is unknown
        return "bin"
    return _EXT.get(fmt, fmt)


class JudgmentStore:
    """A directory of `judgments.jsonl` (one judgment per line, appended) and `photos/<sha256>.<ext>`.

    Every add is fsync'd before it returns, photo first, so an acknowledged judgment survives a crash; a line torn by
    a crash mid-write was never acknowledged, and `read` skips it (counted in `skipped`).
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.path = self.root / JUDGMENTS_FILE
        self.skipped = 0
        self._lock = threading.Lock()
        # The latest judgment per key, with the file's (size, mtime) it was read at: a search on the workbench asks
        # for the current grades, and the file is read again only when it changed (another process wrote to it).
        self._latest: dict[tuple[str, str, str, str], Judgment] = {}
        self._seen: tuple[int, int] | None = None

    def add(self, j: Judgment, photo: bytes | None = None) -> None:
        """Appends one judgment durably; pass the query photo's bytes with the first judgment of a photo query (an
        export leaves out a photo query whose photo was never stored)."""
        line = (json.dumps(j.to_dict(), ensure_ascii=False) + "\n").encode("utf-8")
        if photo is not None and photo_sha(photo) != j.photo:
            raise ValueError("photo: the bytes given do not hash to the judgment's 'photo' sha256; pass the query photo.")
        with self._lock:
            if not self.root.is_dir():
                self.root.mkdir(parents=True)
                fsync_dir(self.root.parent)   # the new directory's own entry
            if photo is not None and self.photo_path(j.photo) is None:
                self._write_photo(j.photo, photo)
            created = not self.path.exists()
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                size = os.fstat(fd).st_size
                cached = self._seen is not None and self._seen[0] == size
                if size and os.pread(fd, 1, size - 1) != b"\n":
                    line = b"\n" + line  # a crash tore the last line: start afresh, or this one would be torn too
                # One write of the whole line: O_APPEND puts it at the end even beside another process's writes.
                written = os.write(fd, line)
                if written != len(line):
                    raise OSError(f"{self.path}: short write ({written} of {len(line)} bytes); is the disk full?")
                os.fsync(fd)
                stat = os.fstat(fd)
            finally:
                os.close(fd)
            if created:
                fsync_dir(self.root)  # the new file's directory entry must be durable too
            if cached or created:      # nobody else wrote since the cache was read: add this one to it
                self._latest.pop(_key(j), None)
                self._latest[_key(j)] = j
                self._seen = (stat.st_size, stat.st_mtime_ns)
            else:
                self._seen = None

    def _write_photo(self, sha: str, data: bytes) -> None:
        folder = self.root / PHOTOS_DIR
        folder.mkdir(exist_ok=True)
        write_durably(folder / f"{sha}.{_photo_ext(data)}", data)

    def photo_path(self, sha: str) -> Path | None:
        """The stored photo of this sha256, or None (also for anything that is not a sha256, e.g. a URL's "../")."""
        if not _SHA.fullmatch(sha or ""):
            return None
        found = sorted((self.root / PHOTOS_DIR).glob(f"{sha}.*"))
        return found[0] if found else None

    def read(self) -> list[Judgment]:
        """Every judgment in the order they were added; torn or malformed lines are skipped and counted."""
        self.skipped = 0
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return []
        out = []
        for raw in data.split(b"\n"):
            if not raw.strip():
                continue
            try:
                out.append(Judgment.from_dict(json.loads(raw.decode("utf-8"))))
            except (ValueError, TypeError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
                self.skipped += 1
        return out

    def current(self, tenant: str | None = None) -> list[Judgment]:
        """The latest judgment per (tenant, judge, query, item), of one tenant or all (the file is read again only
        when it changed since the last read or add)."""
        with self._lock:
            try:
                stat = self.path.stat()
                now = (stat.st_size, stat.st_mtime_ns)
            except FileNotFoundError:
                now = (0, 0)
            if now != self._seen:
                self._latest = {_key(j): j for j in latest(self.read())}
                self._seen = now
            found = list(self._latest.values())
        return [j for j in found if tenant is None or j.tenant == tenant]


def _key(j: Judgment) -> tuple[str, str, str, str]:
    return j.tenant, j.who, j.qid, j.item


def latest(judgments: Iterable[Judgment]) -> list[Judgment]:
    """The last judgment per (tenant, who, qid, item), in file order: re-grading replaces the earlier grade. File
    order, not `ts`, decides, since it is the order the store acknowledged them (judges' clocks may differ)."""
    last: dict[tuple[str, str, str, str], Judgment] = {}
    for j in judgments:
        key = _key(j)
        last.pop(key, None)  # re-insert so the result keeps the order of the latest grades
        last[key] = j
    return list(last.values())


def final_grades(judgments: Iterable[Judgment]) -> dict[str, dict[str, int]]:
    """One grade per (qid, item): the median of the judges' current grades, rounded down.

    Rounding down is the conservative choice when two judges split (0 and 2 give 1; 1 and 2 give 1): an item counts
    as relevant only as far as the judges agree it is, so a disputed grade never inflates the metrics.
    """
    by_pair: dict[tuple[str, str], list[int]] = {}
    for j in latest(judgments):
        by_pair.setdefault((j.qid, j.item), []).append(j.grade)
    out: dict[str, dict[str, int]] = {}
    for (qid, item), grades in sorted(by_pair.items()):
        out.setdefault(qid, {})[item] = math.floor(statistics.median(grades))
    return out


def _kappa(a: Sequence[int], b: Sequence[int]) -> tuple[float | None, str]:
    """Cohen's kappa (unweighted) of two judges' grades on the same pairs, or None and why it is undefined."""
    if len(set(a) | set(b)) == 1:
        return None, (f"undefined: both judges gave every shared pair grade {a[0]}, so agreement expected by chance "
                      "is already 1; grade more varied results to measure it")
    from sklearn.metrics import cohen_kappa_score

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the single-label case, the only one that warns, is handled above
        return float(cohen_kappa_score(a, b, labels=list(GRADES))), ""


def _queries(judgments: Iterable[Judgment]) -> dict[str, tuple[str, str]]:
    """qid -> (text, photo) as first typed: the same query in other casing or spacing is the same qid."""
    out: dict[str, tuple[str, str]] = {}
    for j in judgments:
        out.setdefault(j.qid, (j.text, j.photo))
    return out


def agreement(judgments: Iterable[Judgment]) -> dict[str, Any]:
    """How far judges agree: Cohen's kappa and observed agreement for every pair of judges who graded a same
    (qid, item), and every (qid, item) whose judges differ."""
    current = latest(judgments)
    queries = _queries(current)
    grades: dict[tuple[str, str], dict[str, int]] = {}
    for j in current:
        grades.setdefault((j.qid, j.item), {})[j.who] = j.grade
    judges = sorted({j.who for j in current})
    pairs = []
    for a, b in combinations(judges, 2):
        shared = [(g[a], g[b]) for g in grades.values() if a in g and b in g]
        if not shared:
            continue
        ga, gb = [x for x, _ in shared], [y for _, y in shared]
        kappa, note = _kappa(ga, gb)
        pair: dict[str, Any] = {"judges": [a, b], "shared": len(shared), "kappa": kappa,
                                "observed": sum(x == y for x, y in shared) / len(shared)}
        if note:
            pair["note"] = note
        pairs.append(pair)
    disagreements = [{"qid": qid, "text": queries[qid][0], "photo": queries[qid][1], "item": item,
                      "grades": dict(sorted(g.items()))}
                     for (qid, item), g in sorted(grades.items()) if len(set(g.values())) > 1]
    return {"judges": len(judges), "queries": len(queries), "pairs": len(grades), "judge_pairs": pairs,
            "disagreements": disagreements}


def export(judgments: Iterable[Judgment], out_dir: str | Path, photos_from: JudgmentStore | None) -> dict[str, Any]:
    """Writes one tenant's judgments as a BEIR set: queries.jsonl, qrels/test.tsv (final grades) and agreement.json,
    with each query photo copied under photos/. Returns a summary.

    A photo query whose photo is not in `photos_from` is left out (and counted): replaying it as text alone would
    score another query than the one judged.
    """
    current = latest(judgments)
    tenants = sorted({j.tenant for j in current})
    if len(tenants) > 1:
        raise ValueError(f"the judgments are of {len(tenants)} tenants ({', '.join(map(repr, tenants))}); their item ids "
                         "belong to different catalogs, so export one tenant at a time.")
    out_dir = Path(out_dir)
    queries = _queries(current)
    lines, photos, missing = [], 0, []
    for qid, (text, sha) in sorted(queries.items()):
        line = {"_id": qid, "text": text}
        if sha:
            source = photos_from.photo_path(sha) if photos_from is not None else None
            if source is None:
                missing.append(qid)
                continue
            (out_dir / PHOTOS_DIR).mkdir(parents=True, exist_ok=True)
            target = out_dir / PHOTOS_DIR / source.name
            if source.resolve() != target.resolve():
                shutil.copyfile(source, target)
            line["image"] = f"{PHOTOS_DIR}/{source.name}"
            photos += 1
        lines.append(json.dumps(line, ensure_ascii=False) + "\n")
    left_out = set(missing)
    kept = [j for j in current if j.qid not in left_out]
    qrels = final_grades(kept)
    agreed = agreement(kept)
    paths = {"queries": out_dir / QUERIES_FILE, "qrels": out_dir / QRELS_FILE, "agreement": out_dir / AGREEMENT_FILE}
    paths["qrels"].parent.mkdir(parents=True, exist_ok=True)
    paths["queries"].write_text("".join(lines), encoding="utf-8")
    paths["qrels"].write_text("query-id\tcorpus-id\tscore\n" + "".join(
        f"{qid}\t{item}\t{grade}\n" for qid, judged in sorted(qrels.items()) for item, grade in sorted(judged.items())),
        encoding="utf-8")
    paths["agreement"].write_text(json.dumps(agreed, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return {"queries": len(lines), "pairs": agreed["pairs"], "judges": agreed["judges"], "tenant": tenants[0] if tenants else "",
            "kappa": [{k: p[k] for k in ("judges", "shared", "kappa", "observed")} for p in agreed["judge_pairs"]],
            "disagreements": len(agreed["disagreements"]), "photos": photos, "missing_photos": missing,
            "files": {k: str(v) for k, v in paths.items()}}


def export_paths(out_dir: str | Path) -> tuple[Path, Path]:
    """(queries.jsonl, qrels/test.tsv) of an export; raises ValueError when the folder is not one."""
    out_dir = Path(out_dir)
    queries, qrels = out_dir / QUERIES_FILE, out_dir / QRELS_FILE
    if not queries.is_file() or not qrels.is_file():
        raise ValueError(f"{out_dir} is not an export of judgments (no {QUERIES_FILE} and {QRELS_FILE} in it); "
                         f"make one with `vitrine judgments export --from DIR --out {out_dir}`.")
    return queries, qrels
