"""How the command lines end (asr/process_exit.py): a torchrun rank skips the interpreter's
teardown, where gloo's threads could abort a finished run, but nothing it printed is lost."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROGRAM = ("import atexit, logging, sys; from asr.process_exit import exit_command; "
           "atexit.register(lambda: print('teardown ran', file=sys.stderr, flush=True)); "
           "logging.basicConfig(stream=sys.stderr); logging.getLogger('x').warning('logged'); "
           "print('printed', end=''); sys.stderr.write('unflushed'); exit_command(3)")


@pytest.mark.parametrize("env, teardown", [({"WORLD_SIZE": "2"}, False), ({"TORCHELASTIC_RUN_ID": "r"}, False),
                                           ({}, True)])
def test_a_torchrun_rank_exits_with_its_code_and_its_output_but_no_teardown(env, teardown):
    base = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "TORCHELASTIC_RUN_ID")}
    r = subprocess.run([sys.executable, "-c", PROGRAM], capture_output=True, text=True, cwd=ROOT,
                       env={**base, **env, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert r.returncode == 3
    assert r.stdout == "printed" and "logged" in r.stderr and "unflushed" in r.stderr
    assert ("teardown ran" in r.stderr) == teardown


def test_the_command_lines_end_through_it():
    for cli in ("asr/__main__.py", "kws/__main__.py"):
        assert "exit_command(main())" in (ROOT / cli).read_text()
