"""`python _run_worker.py EVENTS KILL vlalign-args...`: `vlalign ARGS` in this process, for the kill tests.

Every write a run makes is an event, appended to the file EVENTS as it happens (one name a line): a file
written atomically (a shard, a manifest, a marker), a model save, a training checkpoint, a done-items line,
a forward pass of training or of the reference log-probs (named by the arm's folder). With KILL = "NAME#N" the process SIGKILLs itself
in the middle of the N-th event NAME (after a temporary file is written and before it is renamed, after a
model's weights are written and before its folder is renamed, ...); with "-" it runs to the end. Names
carry the file's path in the run, so a test can aim at every stage and every save.
"""

from __future__ import annotations

import os
import signal
import sys
from collections import Counter
from pathlib import Path

EVENTS, KILL, ARGS = sys.argv[1], sys.argv[2], sys.argv[3:]
OUT = Path(ARGS[ARGS.index("--out") + 1]).absolute()
_seen: Counter = Counter()
_round = ["run"]


def event(kind: str, path: str | Path | None = None) -> None:
    """Record one event; die here when it is the one to kill at."""
    if path is not None:
        where = Path(path).absolute()
        where = where.relative_to(OUT) if where.is_relative_to(OUT) else where
        name = f"{kind}:{where.as_posix()}"
        if where.parts and where.parts[0].startswith("round"):
            _round[0] = where.parts[0]
    else:
        name = f"{kind}:{_round[0]}"
    _seen[name] += 1
    with open(EVENTS, "a") as f:
        f.write(name + "\n")
    if f"{name}#{_seen[name]}" == KILL:
        os.kill(os.getpid(), signal.SIGKILL)


def install() -> None:
    import vlalign.data.store as store
    import vlalign.models.load as load
    import vlalign.runner as runner
    import vlalign.train.loop as loop
    import vlalign.train.preference as preference

    atomic, check, write_json, save_file, logps, mark = (store.write_atomic, load._check_safetensors,
                                                         runner.write_json, loop.save_file, preference.continuation_logps,
                                                         store.Stage.mark_items_done)
    train_arm = runner.train_arm

    def write_atomic(path, write):
        atomic(path, lambda tmp: (write(tmp), event("write", path)))

    def _check_safetensors(folder):
        event("save", str(folder).replace(".saving", "").replace("/.", "/"))
        check(folder)

    def _write_json(path, data):
        event("marker", path)
        write_json(path, data)

    def _save_file(tensors, filename):
        save_file(tensors, filename)
        event("checkpoint")

    def _continuation_logps(*args, **kwargs):
        event("forward")
        return logps(*args, **kwargs)

    def _train_arm(arm, model, processor, folder, *args, **kwargs):
        _round[0] = Path(folder).absolute().relative_to(OUT).as_posix()
        return train_arm(arm, model, processor, folder, *args, **kwargs)

    def _mark_items_done(self, keys):
        if keys:
            event("items", self.dir)
        mark(self, keys)

    store.write_atomic, load._check_safetensors, runner.write_json = write_atomic, _check_safetensors, _write_json
    loop.save_file, preference.continuation_logps, store.Stage.mark_items_done = _save_file, _continuation_logps, _mark_items_done
    runner.train_arm = _train_arm


if __name__ == "__main__":
    install()
    from vlalign import cli

    sys.argv = ["vlalign", *ARGS]
    cli.main()
