"""`python -m npseg ...` and the `npseg` command: npseg.cli.main in a process set up for a short run.

A one-image run is mostly start-up, so the command skips two costs a library cannot:
- the cyclic garbage collector is off while the modules import and the kernels load (it would
  only traverse their long-lived objects, ~0.15 s); the command turns it back on, with those
  objects frozen out of later collections, once its model is warm (npseg.cli.end_of_start_up);
- at the end, after flushing the output and running the exit handlers, the process exits without
  the interpreter's teardown (freeing every module's, Numba's and LLVM's objects, ~0.2 s);
- so it need not wait for a background compile's kernel in hand either (up to ~5 s on a first
  run): the compile's remainder goes on in a detached, low-priority `npseg warmup` process.
"""
import atexit
import gc
import os
import sys


def run() -> None:
    gc.disable()
    from .cli import main

    code = main()
    compiling = sys.modules.get("npseg.background_compile")
    if compiling is not None:
        compiling.hand_over_unfinished()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a reader that left, or a stream main() closed
            pass
    os._exit(code)


if __name__ == "__main__":
    run()
