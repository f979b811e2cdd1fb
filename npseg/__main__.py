"""`python -m npseg ...` and the `npseg` command: npseg.cli.main in a process set up for a short run.

A one-image run is mostly start-up, so the command skips two costs a library cannot:
- the cyclic garbage collector is off while the modules import and the kernels load (it would
  only traverse their long-lived objects, ~0.15 s); the command turns it back on, with those
  objects frozen out of later collections, once its model is warm (npseg.cli.end_of_start_up);
- at the end, after flushing the output and running the exit handlers, the process exits without
  the interpreter's teardown (freeing every module's, Numba's and LLVM's objects, ~0.2 s).
"""
import atexit
import gc
import os
import sys


def run() -> None:
    gc.disable()
    from .cli import main

    code = main()
    atexit._run_exitfuncs()  # e.g. a background compile stops after the kernel in hand
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a reader that left, or a stream main() closed
            pass
    os._exit(code)


if __name__ == "__main__":
    run()
