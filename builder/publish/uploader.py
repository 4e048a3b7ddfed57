"""The page-blob uploader: sends what holds data, footer last, N requests at a time, and
reads the blob back to hash it.

It works on any object with azure-storage-blob's BlobClient methods `upload_page`,
`list_page_ranges` and `download_blob`; the blob exists with the image's size already.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from builder.publish import ranges
from builder.publish.progress import Progress
from builder.publish.ranges import MAX_PUT, PAGE, Range

log = logging.getLogger(__name__)
DEFAULT_JOBS = 8  # Put Page requests in flight; docs/benchmarks.md shows the effect

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class UploadStats:
    size: int
    sent: int = 0
    requests: int = 0
    skipped_holes: int = 0
    skipped_zeros: int = 0
    skipped_present: int = 0
    seconds: float = 0.0

    @property
    def skipped(self) -> int:
        return self.skipped_holes + self.skipped_zeros + self.skipped_present

    def as_dict(self) -> dict[str, Any]:
        return {"size": self.size, "bytes_sent": self.sent, "requests": self.requests,
                "bytes_skipped": self.skipped, "skipped_holes": self.skipped_holes,
                "skipped_zero_pages": self.skipped_zeros,
                "skipped_already_present": self.skipped_present,
                "seconds": round(self.seconds, 3)}


def present_ranges(blob: Any) -> list[Range]:
    """What the blob already holds (Get Page Ranges), as sorted [start, end) ranges."""
    return ranges.merge([(r.start, r.end + 1) for r in blob.list_page_ranges()
                         if not getattr(r, "cleared", False)])


def upload_pages(blob: Any, image: Path, jobs: int = DEFAULT_JOBS,
                 present: list[Range] | None = None, progress: Progress | None = None
                 ) -> UploadStats:
    """Send every non-zero page of `image` the blob does not already have; the last page
    (the VHD footer) goes after all others succeeded, so a blob with a footer is complete."""
    present = present or []
    started = time.monotonic()
    fd = os.open(image, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        if size % PAGE or size < PAGE:
            raise ValueError(f"{image} is {size} bytes, not a whole number of 512-byte pages")
        stats = UploadStats(size=size)
        lock = threading.Lock()
        body = size - PAGE
        data = ranges.align(ranges.data_ranges(fd, size), size)
        stats.skipped_holes = size - ranges.total(data)
        body_data = [(a, min(b, body)) for a, b in data if a < body]
        if progress is not None:
            progress.add(skipped=stats.skipped_holes)

        def send(piece: Range) -> None:
            start, end = piece
            buffer = ranges.read_exact(fd, start, end - start)
            runs = ranges.nonzero_runs(buffer, start)
            zeros = (end - start) - ranges.total(runs)
            todo = ranges.subtract(runs, present)
            already = ranges.total(runs) - ranges.total(todo)
            for a, b in todo:
                blob.upload_page(buffer[a - start:b - start], offset=a, length=b - a,
                                 validate_content=True)  # sends Content-MD5
                with lock:
                    stats.sent += b - a
                    stats.requests += 1
                if progress is not None:
                    progress.add(sent=b - a)
            with lock:
                stats.skipped_zeros += zeros
                stats.skipped_present += already
            if progress is not None:
                progress.add(skipped=zeros + already)

        for _ in ordered_parallel(send, ranges.chunks(body_data, MAX_PUT), jobs):
            pass
        send((body, size))  # the footer, last
    finally:
        os.close(fd)
    stats.seconds = time.monotonic() - started
    return stats


@dataclass(frozen=True)
class Mismatch:
    offset: int  # the first page where the blob and the image differ
    reason: str


def verify_blob(blob: Any, image: Path, jobs: int = DEFAULT_JOBS,
                progress: Progress | None = None) -> Mismatch | None:
    """Read the blob's page ranges back from the service and compare them with the image,
    byte for byte; the image's data outside them must be zeros (what a page blob returns
    where nothing was written). No mismatch means the blob's content hashes exactly as the
    image does, without hashing gigabytes of zeros twice."""
    fd = os.open(image, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        remote = [(a, min(b, size)) for a, b in present_ranges(blob) if a < size]
        if remote and remote[-1][1] > size:
            return Mismatch(size, "the blob holds pages beyond the image's end")

        def compare(piece: Range) -> Mismatch | None:
            start, end = piece
            got = blob.download_blob(offset=start, length=end - start).readall()
            want = ranges.read_exact(fd, start, end - start)
            if progress is not None:
                progress.add(sent=end - start)
            if got == want:
                return None
            if len(got) != len(want):
                return Mismatch(start, f"read {len(got)} bytes back, expected {len(want)}")
            first = next(i for i in range(0, len(want), PAGE)
                         if got[i:i + PAGE] != want[i:i + PAGE])
            return Mismatch(start + first, "the page read back differs from the image")

        def zeros_only(piece: Range) -> Mismatch | None:
            start, end = piece
            runs = ranges.nonzero_runs(ranges.read_exact(fd, start, end - start), start,
                                       block=PAGE)
            if progress is not None:
                progress.add(skipped=end - start)
            return Mismatch(runs[0][0], "the image holds data the blob lacks") if runs else None

        for mismatch in ordered_parallel(compare, list(ranges.chunks(remote)), jobs):
            if mismatch is not None:
                return mismatch
        local_only = ranges.subtract(ranges.align(ranges.data_ranges(fd, size), size), remote)
        for mismatch in ordered_parallel(zeros_only, list(ranges.chunks(local_only)), jobs):
            if mismatch is not None:
                return mismatch
        if progress is not None:
            progress.add(skipped=size - ranges.total(remote) - ranges.total(local_only))
    finally:
        os.close(fd)
    return None


def ordered_parallel(fn: Callable[[T], R], items: Iterable[T], jobs: int) -> Iterator[R]:
    """fn over items on `jobs` threads, results in order, at most 2×jobs in flight (bounded
    memory). The first failure cancels what has not started and is raised."""
    window: deque[Future[R]] = deque()
    with ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="publish") as pool:
        try:
            for item in items:
                window.append(pool.submit(fn, item))
                if len(window) >= 2 * jobs:
                    yield window.popleft().result()
            while window:
                yield window.popleft().result()
        finally:
            for future in window:
                future.cancel()
