"""footprint.exit_now: the process ends without the interpreter's teardown, but nothing a normal
exit does for the program is lost: atexit handlers run, buffered output arrives, the code stands.
And footprint.imports_frozen: no collection during the imports, what they made frozen after."""

from __future__ import annotations

import gc
import subprocess
import sys
import textwrap

from stackone_pipeline.footprint import imports_frozen

PROGRAM = textwrap.dedent(
    """
    import atexit, sys, tempfile, threading, time
    from pathlib import Path
    from stackone_pipeline.footprint import exit_now, imports_frozen

    marker, mode = Path(sys.argv[1]), sys.argv[2]
    scratch = tempfile.TemporaryDirectory()  # removed at exit by a weakref finalizer (an atexit handler)
    Path(sys.argv[3]).write_text(scratch.name)
    atexit.register(lambda: marker.write_text("handlers ran"))
    if mode != "not frozen":
        with imports_frozen():
            import json  # noqa: F401
    if mode == "thread":  # a thread of the command still working: a normal exit waits for it
        threading.Thread(target=lambda: (time.sleep(0.5), print("thread done", flush=True))).start()
    sys.stdout.write("no newline, still buffered")
    exit_now(3)
    print(" | returned", end="")
    sys.exit(4)
    """
)


def run(tmp_path, mode: str) -> tuple[subprocess.CompletedProcess, str]:
    marker, scratch = tmp_path / f"marker-{mode}", tmp_path / f"scratch-{mode}"
    proc = subprocess.run(
        [sys.executable, "-c", PROGRAM, str(marker), mode, str(scratch)],
        capture_output=True,  # pipes: stdout is block-buffered, as under a CI runner
        text=True,
        timeout=60,
    )
    assert marker.read_text() == "handlers ran", proc.stderr
    assert not (tmp_path / scratch.read_text()).exists()  # the temporary directory was cleaned up
    return proc, proc.stdout


def test_exit_now_runs_the_handlers_flushes_and_keeps_the_code(tmp_path):
    proc, out = run(tmp_path, "frozen")
    assert (proc.returncode, out) == (3, "no newline, still buffered"), proc.stderr


def test_exit_now_leaves_a_process_it_cannot_end_safely_to_the_normal_exit(tmp_path):
    proc, out = run(tmp_path, "not frozen")  # nothing frozen: nothing to save
    assert (proc.returncode, out) == (4, "no newline, still buffered | returned")
    proc, out = run(tmp_path, "thread")
    assert proc.returncode == 4 and "thread done" in out


def test_imports_frozen_pauses_the_collector_and_freezes_what_the_imports_made():
    was = gc.get_freeze_count()
    try:
        with imports_frozen():
            assert not gc.isenabled()
            made = [[] for _ in range(1000)]  # tracked objects, as a module's are
        assert gc.isenabled()
        assert gc.get_freeze_count() >= was + len(made)
        gc.disable()  # a process that runs without the collector keeps it off
        with imports_frozen():
            pass
        assert not gc.isenabled()
    finally:
        gc.unfreeze()
        gc.enable()
