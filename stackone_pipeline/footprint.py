"""What a command's process leaves out to stay small (measured: `benchmarks/command_bench.py`).

* pyarrow imports pandas (about 50 MB resident and 0.3 s of CPU) the first time it builds an
  array from Python objects, only to ask whether they are pandas objects. The pipeline never
  hands it one, so the commands that run the pipeline (`backfill`, `demo`) tell pyarrow, before
  its first array, that pandas is not there. pyarrow asks again, and then finds pandas, wherever
  pandas is really needed (`Table.to_pandas()` still works): only the needless import is skipped.
* Once the definitions are loaded, the objects of every imported module (Dagster's alone: several
  hundred thousand) live as long as the process. `gc.freeze()` moves them out of the cyclic
  collector's sight, so its full collections during the run no longer walk them, and exiting
  no longer does either (measured: 0.45 s of a backfill's exit, of ~5 s).
* Once the command is done, the interpreter's teardown would free every object of those modules
  one by one (measured: ~0.3 s of a ~4 s backfill), memory the kernel takes back at once anyway.
  `exit_now` runs the atexit handlers (logging, temporary directories, ...), flushes stdout and
  stderr and ends the process there. Only the program's own entry point calls it, never `main()`
  called from other code.
* pyarrow's default allocator (mimalloc) keeps what it has freed for reuse; the system allocator
  gives it back. Batches here are a page at a time, so reuse saves little and costs ~15 MB.
  (`ARROW_DEFAULT_MEMORY_POOL`, read when pyarrow first allocates: set it to keep mimalloc.)
"""

from __future__ import annotations

import atexit
import gc
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.abc import MetaPathFinder


class _PandasAbsent(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "pandas" or name.startswith("pandas."):
            raise ImportError(f"{name} is left out of this process until it is needed")
        return None


def lean_process() -> None:
    """Call before the pipeline's first Arrow array in this process (a no-op for what is loaded)."""
    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")  # read when pyarrow makes its pool
    import pyarrow as pa

    if "pandas" in sys.modules:
        return
    finder = _PandasAbsent()
    sys.meta_path.insert(0, finder)
    try:
        pa.array([0])  # pyarrow looks for pandas once, here, and remembers it did not find it
    finally:
        sys.meta_path.remove(finder)


@contextmanager
def imports_frozen() -> Iterator[None]:
    """Around the imports of what the process needs: what they make stays alive, so the cyclic
    collector does not run during them (its passes over the growing heap cost ~0.15 s of a
    backfill's imports), and once they are done `gc.freeze()` takes it out of the collector's sight.
    (No collection before the freeze: the imports leave a few dozen unreachable objects, not worth
    the ~0.1 s a full collection of the ~150,000 tracked ones takes here.)"""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


def exit_now(code: int) -> None:
    """End a process that froze its imports without the interpreter's teardown (module doc).
    Returns, for a normal exit, when there is nothing to save or a thread of the command still
    runs (a normal exit waits for it)."""
    if not gc.get_freeze_count() or any(
        t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()
    ):
        return
    try:
        atexit._run_exitfuncs()  # what a normal exit runs first, in the same order
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # a closed pipe: nothing more can be said on it
                pass
        os._exit(code)
