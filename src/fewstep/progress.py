"""A progress bar that costs nothing when off: tqdm when installed, a plain stderr line otherwise."""

from __future__ import annotations

import sys
import time

__all__ = ["progress"]


def progress(iterable, total: int | None = None, desc: str = "", enabled: bool = True):
    """Iterate with a progress bar on stderr (tqdm if available); `enabled=False` yields plainly."""
    if not enabled:
        yield from iterable
        return
    try:
        from tqdm.auto import tqdm
    except ImportError:
        tqdm = None
    if tqdm is not None:
        yield from tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True)
        return
    start, last = time.time(), 0.0
    for i, item in enumerate(iterable, 1):
        yield item
        now = time.time()
        if now - last > 0.5 or i == total:
            rate = i / max(now - start, 1e-9)
            sys.stderr.write(f"\r{desc} {i}/{total if total else '?'} ({rate:.1f} it/s)")
            sys.stderr.flush()
            last = now
    sys.stderr.write("\n")
