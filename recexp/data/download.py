"""Download a file once into a cache: resumable, verified by sha256, renamed into place only when complete.

``fetch(url, target)`` writes ``target.part`` (continued with an HTTP ``Range`` request when a part is
left from an interrupted run and the server honours it), hashes it while writing, compares the sha256
with the expected one (pinned by the caller, else the server's ``X-Linked-Etag`` / ``ETag`` when that
is a sha256, as Hugging Face sends for LFS files), records it in ``target.sha256`` and renames the
part onto ``target``. A later call checks the cached file against that record and fetches it again,
with a warning, when it no longer matches.

The standard library's urllib does the transfer, not ``huggingface_hub``: hf_hub_download keeps its own
cache layout (blobs and symlinks), reads ``HF_HUB_OFFLINE``, talks to the Hub's API rather than to any
``base_url`` (a mirror, or a local server in the tests), and raises its own errors; ``requests`` is
not a declared dependency of recexp. urllib does all that is needed here in a few lines.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import http.client
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from urllib.error import HTTPError, URLError
from urllib.request import HTTPRedirectHandler, Request, build_opener

from tqdm.auto import tqdm

from recexp.errors import DataError
from recexp.files import atomic_file

log = logging.getLogger(__name__)
CHUNK = 1 << 20  # bytes read and hashed at a time
LARGE = 8 << 20  # downloads of at least this many bytes show a progress bar
TIMEOUT = 60  # seconds without an answer before a connection counts as broken
SHA256 = re.compile(r"[0-9a-f]{64}")


def fetch(url: str, target: Path, sha256: str | None = None, progress: bool = True) -> str:
    """The sha256 of ``target``, downloaded from ``url`` unless a verified copy is cached there; ``sha256``
    is the expected digest, if known. Raises :class:`DataError` naming the URL and the manual step."""
    with _exclusive(target.with_name(target.name + ".lock")):
        cached = _cached(target, sha256)
        return cached if cached is not None else _download(url, target, sha256, progress)


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, read a chunk at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def record_of(target: Path) -> Path:
    """Where the sha256 of a downloaded file is recorded."""
    return target.with_name(target.name + ".sha256")


def _part(target: Path) -> Path:
    return target.with_name(target.name + ".part")


@contextlib.contextmanager
def _exclusive(lock: Path) -> Iterator[None]:
    """One downloader per file at a time (parallel jobs of a sweep load the same data); released on exit."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as handle:
        with contextlib.suppress(OSError):  # a file system without locks: downloads are then not serialised
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _cached(target: Path, expected: str | None) -> str | None:
    """The sha256 of the cached ``target`` when it matches its record (and ``expected``); a copy without a record
    (put there by hand) is recorded as it is, with a warning, when nothing pinned says otherwise; a damaged copy is
    removed, with a warning, and None returned."""
    if not target.is_file():
        return None
    record = record_of(target)
    recorded = record.read_text().strip() if record.is_file() else None
    actual = file_sha256(target)
    if actual == recorded and expected in (None, actual):
        return actual
    if recorded is None and expected in (None, actual):
        log.warning("%s has no recorded sha256 (placed by hand?); using it as it is and recording %s%s.", target, actual,
                    "" if expected else ": pin it in dataset.checksums to have it checked")
        with atomic_file(record) as staged:
            staged.write_text(actual + "\n")
        return actual
    reason = ("it has no recorded sha256" if recorded is None else
              f"its sha256 {actual} differs from the recorded {recorded}" if actual != recorded else
              f"its sha256 {actual} differs from the expected {expected}")
    log.warning("The cached %s cannot be trusted (%s); downloading it again.", target, reason)
    target.unlink()
    record.unlink(missing_ok=True)
    return None


class _Redirects(HTTPRedirectHandler):
    """Follows redirects, keeping the headers of each: Hugging Face sends ``X-Linked-Etag`` on the redirect."""

    def __init__(self):
        self.headers: list = []

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        self.headers.append(headers)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _server_sha256(headers: list) -> str | None:
    """A sha256 the server vouches for: ``X-Linked-Etag`` (any hop), else the final ``ETag``, if 64 hex digits."""
    candidates = [h.get("X-Linked-Etag") for h in headers] + [headers[-1].get("ETag")]
    for value in candidates:
        tag = (value or "").removeprefix("W/").strip('"').lower()
        if SHA256.fullmatch(tag):
            return tag
    return None


def _open(url: str, offset: int):
    """(response, headers of every hop) for ``url``, asking for the bytes from ``offset`` on when > 0."""
    redirects = _Redirects()
    request = Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    response = build_opener(redirects).open(request, timeout=TIMEOUT)
    return response, [*redirects.headers, response.headers]


def _download(url: str, target: Path, expected: str | None, progress: bool) -> str:
    part = _part(target)
    offset = part.stat().st_size if part.is_file() else 0
    manual = f"download {url} into {target.parent} by hand, or set dataset.path to a folder holding the files"
    try:
        response, headers = _open(url, offset)
    except HTTPError as err:
        if err.code == 416 and offset:  # the part is not a prefix the server can continue: start afresh
            part.unlink()
            return _download(url, target, expected, progress)
        raise DataError(f"Cannot download {url}: HTTP {err.code} {err.reason}; {manual}.") from None
    except (URLError, OSError, http.client.HTTPException) as err:
        raise DataError(f"Cannot download {url} ({getattr(err, 'reason', err)}); {manual}.") from None
    with response:
        if offset and response.status == 206 and _range_start(response) != offset:  # not the bytes asked for
            response.close()
            part.unlink()
            return _download(url, target, expected, progress)
        if response.status != 206:
            offset = 0  # a fresh download: the server sent the whole file
        pinned = expected is not None
        expected = expected or _server_sha256(headers)
        digest, total = _write(response, part, offset, progress, url, manual)
    if total is not None and part.stat().st_size != total:
        raise DataError(f"The download of {url} broke off at {part.stat().st_size} of {total} bytes; "
                        f"run again to resume it, or {manual}.")
    if expected is not None and digest != expected:
        part.unlink()
        source, fix = ("dataset.checksums", "correct dataset.checksums") if pinned else ("the server", "run again to download it afresh")
        raise DataError(f"{target.name} downloaded from {url} has sha256 {digest}, but {source} expects {expected}; "
                        f"the download was removed: {fix}, or {manual}.")
    with atomic_file(record_of(target)) as staged:
        staged.write_text(digest + "\n")
    os.replace(part, target)
    log.info("Downloaded %s to %s (sha256 %s).", url, target, digest)
    return digest


def _range_start(response) -> int | None:
    """The first byte a 206 answer holds, from ``Content-Range: bytes START-END/SIZE``."""
    match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
    return int(match.group(1)) if match else None


def _write(response, part: Path, offset: int, progress: bool, url: str, manual: str) -> tuple[str, int | None]:
    """Append the body to ``part`` (rewrite it when ``offset`` is 0), hashing what the part holds; returns
    (sha256 of the whole part, its expected size when the server said)."""
    digest = hashlib.sha256()
    if offset:
        with open(part, "rb") as kept:
            while chunk := kept.read(CHUNK):
                digest.update(chunk)
    length = response.headers.get("Content-Length")
    total = offset + int(length) if length and length.isdigit() else None
    quiet = not progress or (total is not None and total < LARGE)
    with open(part, "ab" if offset else "wb") as out, tqdm(total=total, initial=offset, unit="B", unit_scale=True,
                                                           unit_divisor=1024, desc=part.name.removesuffix('.part'), disable=quiet) as bar:
        try:
            while chunk := response.read(CHUNK):
                out.write(chunk)
                digest.update(chunk)
                bar.update(len(chunk))
        except (OSError, http.client.HTTPException) as err:
            raise DataError(f"The download of {url} broke off after {out.tell()} bytes ({err}); "
                            f"run again to resume it, or {manual}.") from None
    return digest.hexdigest(), total
