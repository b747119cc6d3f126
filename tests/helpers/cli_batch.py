"""Many ``python -m adaround_lightning`` command lines from one warm interpreter.

Run as ``python tests/helpers/cli_batch.py CASES.json RESULTS.json`` (by
:func:`tests.helpers.cli.run_cli_batch`). This process imports the command line once (about
4 s of every cold start is torch and Lightning being imported), then forks one child per case:
the child takes the case's argv and working directory, sends its stdout and stderr to files and
calls the same ``main()`` that ``python -m adaround_lightning`` calls. Its exit status and
stderr are its own, as a user's process would have them. Two children run at a time.

``CASES.json``: ``[{"name": ..., "args": [...], "cwd": ...}]``; ``RESULTS.json``: per name,
``{"returncode": int, "stderr": str}``.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path

PARALLEL = 2


def _child(case: dict, stderr: Path, stdout: Path) -> None:
    """Runs in the forked child; never returns."""
    code = 1
    try:
        os.chdir(case["cwd"])
        for fd, path in ((2, stderr), (1, stdout)):
            target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(target, fd)
            os.close(target)
        import adaround_lightning

        # sys.argv[0] under `python -m adaround_lightning` (importing __main__ would run it).
        entry = Path(adaround_lightning.__file__).with_name("__main__.py")
        sys.argv = [str(entry), *case["args"]]
        code = _call_main()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _call_main() -> int:
    from adaround_lightning.app.cli import main

    try:
        main()
    except SystemExit as stop:  # what the interpreter would do with it
        if stop.code is None or isinstance(stop.code, int):
            return stop.code or 0
        sys.stderr.write(f"{stop.code}\n")
        return 1
    except BaseException:  # an uncaught error: the interpreter prints it and exits 1
        traceback.print_exc()
        return 1
    return 0


def main() -> int:
    cases = json.loads(Path(sys.argv[1]).read_text())
    results_path = Path(sys.argv[2])
    import adaround_lightning.app.cli  # noqa: F401 - warm the imports once, before forking

    queue, running, results = list(cases), {}, {}
    while queue or running:
        while queue and len(running) < PARALLEL:
            case = queue.pop(0)
            stderr = results_path.parent / f"{case['name']}.stderr"
            stdout = results_path.parent / f"{case['name']}.stdout"
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                _child(case, stderr, stdout)
            running[pid] = (case["name"], stderr)
        pid, status = os.wait()
        name, stderr = running.pop(pid)
        results[name] = {
            "returncode": os.waitstatus_to_exitcode(status),
            "stderr": stderr.read_text(errors="replace"),
        }
    results_path.write_text(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
