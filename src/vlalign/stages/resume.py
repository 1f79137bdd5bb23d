"""What a run saved, checked before a resume relies on it: every arm of a finished round, and an arm that was
trained and saved but not yet evaluated.

A round is marked done (round.json) once all of its arms are; the runner then skips it and checks its main
policy, the one the next round starts from. The other arms (Silkie's longest-answer baseline) are checked
here too, so a damaged one is named rather than reported as finished: an arm whose marker (arm.json) or
checkpoint is gone, or whose marker is damaged, sends the round through again, where only what that arm
lost is redone; an arm whose checkpoint is damaged is named with the fix (delete it: it is trained again). Checkpoints are checked the cheap way (`check_complete`: sizes,
headers, and a hash of each file whose modification time changed), since nothing is loaded here.

An arm's steps after training (saving, then evaluating) are marked apart: `TRAINED` is written once its
model is saved, so a run stopped during the evaluation loads the saved model and evaluates it again,
instead of training the arm again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlalign import ranks
from vlalign.data.markers import read_marker
from vlalign.models.load import IncompleteCheckpoint, check_complete
from vlalign.progress import warn

ARM_MARKER = "arm.json"
TRAINED = "trained.json"  # an arm trained and saved, its evaluation not yet done


def arm_folder(round_folder: Path, index: int, name: str) -> Path:
    """Where arm `index` of a round keeps its model and markers: the round's own folder for its first arm
    (the policy the next round starts from), a folder of its name for the others."""
    return round_folder if index == 0 else round_folder / name


def _arms_whole(record: Any, folder: Path) -> bool:
    arms = record.get("arms") if isinstance(record, dict) else None
    if not isinstance(arms, dict) or not arms:
        warn(f"{folder / 'round.json'} names no arms; the round runs again (its finished steps are kept)")
        return False
    for i, name in enumerate(arms):
        where = arm_folder(folder, i, name)
        if read_marker(where / ARM_MARKER) is None:
            if not (where / ARM_MARKER).exists():
                warn(f"{where / ARM_MARKER} is missing; the {name} arm's steps run again (those finished are kept)")
            return False
        if not (where / "policy").exists():
            warn(f"{where / 'policy'} is missing; the {name} arm is trained again from its saved pairs")
            return False
        if i:  # the first arm's checkpoint is the runner's to check: it names the fix for the next round too
            try:
                check_complete(where / "policy")
            except IncompleteCheckpoint as e:
                raise IncompleteCheckpoint(e.path, e.problem, f"Delete {e.path} and run the same command again: the "
                                           f"{name} arm of {folder.name} is trained again from its saved pairs "
                                           f"(the stages before it are kept)") from None
    return True


def whole_round(record: Any | None, folder: Path) -> Any | None:
    """`record` (a finished round's marker) when every arm it lists is still whole; None when an arm's marker
    is damaged or missing (warned about: the round runs again, and only that arm's lost steps with it). A
    damaged checkpoint of an arm other than the first raises `IncompleteCheckpoint` naming it and the fix.
    Decided by the main process, so every process of a launched job takes the same steps."""
    if record is None:
        return None
    return record if ranks.on_main(lambda: _arms_whole(record, folder)) else None
