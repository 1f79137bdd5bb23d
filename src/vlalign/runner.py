"""The runner: what every method shares, as one plain recipe.

    setup:  check the config and the backends, claim the run directory, load the policy, evaluate it
    round:  prompts -> the method's pairs (one or more arms) -> train each arm -> save -> evaluate
    end:    the summary

A method only says how its pairs are made (`vlalign.methods`). Every step leaves its result in the run
directory before the next one starts: stages are resumable, a trained arm is saved (whole or not at all,
see `vlalign.models.load.save`) and marked done with its metrics, and a round is marked done when all of
its arms are. A stopped run started again continues where it stopped.

Under a launcher (`torchrun`, `accelerate launch`) every process runs this same recipe: the stages split
their items, training splits its batches, evaluation its questions; the main process alone writes the
markers, the saved models, the summary and the report, and what the others decide from the run directory
(is this step done?) they take from it, so all of them always take the same steps.

Layout::

    run/.lock                       held by the process running it (a second one stops at once)
    run/run.json                    the method and the package versions
    run/base/eval.json              the starting policy's metrics
    run/round<k>/prompts, responses, feedback, pairs, ...   the method's stages
    run/round<k>/policy/            the round's trained policy (the next round starts from it)
    run/round<k>/training/          reference log-probs, mid-training checkpoints, the loss history
    run/round<k>/<arm>/policy/      another arm's model (Silkie's longest-answer baseline)
    run/round<k>/round.json         the round's record: pairs, losses, metrics of every arm
    run/summary.json
"""

from __future__ import annotations

import gc
import time
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch

from vlalign import preflight, ranks, run_record
from vlalign.config import ConfigError, to_dict
from vlalign.data import shortfalls
from vlalign.data.hub import push_finished
from vlalign.data.markers import read_marker, write_marker
from vlalign.data.sources import PromptRequest, source_named
from vlalign.data.store import RunStore, Stage
from vlalign.evaluate.suite import run_suite
from vlalign.feedback.judge import Judge
from vlalign.feedback.judge_local import ModelJudge
from vlalign.feedback.judges import check_judge, make_judge
from vlalign.methods.base import Arm, Method
from vlalign.models.load import IncompleteCheckpoint, check_complete, load, resolve
from vlalign.models.saved import save_trained
from vlalign.models.settings import Runtime
from vlalign.models.types import Model, Processor
from vlalign.progress import log, scope, warn
from vlalign.report import try_report
from vlalign.stages.pairs import examples_under, preference_examples
from vlalign.stages.resume import TRAINED, arm_folder, whole_round
from vlalign.stages.round import Round
from vlalign.stages.settings import ApiSettings, RunConfig
from vlalign.train.fit import fit
from vlalign.train.loop import Carried

MAIN = "policy"
OPTIMIZER = "optimizer.pt"  # an arm that carries its optimizer's state leaves it in its training folder


def write_json(path: Path, data: Any) -> None:
    """Write a marker atomically, the run's paths relative to it (`vlalign.data.markers`)."""
    write_marker(path, data)


def read_json(path: Path) -> Any | None:
    """A marker's content; None when it is missing or damaged (then its step runs again)."""
    return read_marker(path)


def finished(folder: Path, marker: str) -> Any | None:
    """The marker of a step done in `folder` (its model saved too), as the main process reads it, so every
    process of a launched job takes the same steps; None when the step runs (again)."""
    return ranks.on_main(lambda: read_json(folder / marker) if (folder / "policy").exists() else None)


class ScopedModels:
    """The `Models` of a run: each model other than the policy is loaded when a stage's `with` block asks for it
    (under its own runtime settings, or the policy's) and dropped when the last block holding it ends, so
    nothing but the policy is in memory while it trains (`release` before training and before each load).
    A model used every round (GRPO's reference) may be parked instead: kept in host memory, off the
    accelerator, and moved back for its next block, which costs a copy rather than a load from disk.
    API backends hold no weights: each is made once and kept, so its token use adds up over the run."""

    def __init__(self, runtime: Runtime, api: ApiSettings | None = None):
        self.runtime, self.api = runtime, api or ApiSettings()
        self._held: dict[tuple[str, Runtime], list] = {}  # key -> [(model, processor), blocks holding it]
        self._endpoints: dict[str, Judge] = {}
        self._dropped: list[weakref.ref] = []  # models whose last block has ended
        self._parked: dict[tuple[str, Runtime], tuple[tuple[Model, Processor], torch.device]] = {}

    @contextmanager
    def using(self, spec: str, runtime: Runtime | None = None, park: bool = False
              ) -> Iterator[tuple[Model, Processor]]:
        key = (spec, runtime or self.runtime)
        if key not in self._held:
            self.release()
            parked = self._parked.pop(key, None)
            self._held[key] = [load(spec, key[1]) if parked is None else _moved(*parked), 0]
        entry = self._held[key]
        entry[1] += 1
        try:
            yield entry[0]
        finally:
            entry[1] -= 1
            if entry[1] == 0:
                del self._held[key]
                model = entry[0][0]
                if park and _movable(model):
                    self._parked[key] = (entry[0], next(model.parameters()).device)
                    _moved(entry[0], torch.device("cpu"))
                else:
                    self._dropped.append(weakref.ref(model))
                entry.clear()

    @contextmanager
    def chat(self, spec: str, runtime: Runtime | None = None) -> Iterator[Judge]:
        if spec.startswith("api:"):
            yield self.endpoint(spec)
            return
        with self.using(spec, runtime) as (model, processor):
            yield ModelJudge(model, processor, name=spec)

    def endpoint(self, spec: str) -> Judge:
        """The API backend of `spec`, made once per run."""
        if spec not in self._endpoints:
            a = self.api
            self._endpoints[spec] = make_judge(spec, a.concurrency, timeout=a.timeout, max_retries=a.max_retries)
        return self._endpoints[spec]

    def release(self) -> None:
        """Give the memory of the models dropped since the last call back (CUDA's cache to the device), before
        more is needed. A model nothing holds any more went with its last reference (a stage's `as` names hold
        it until the stage's function returns, so this waits for the next load or training); a full
        collection, a third of a second with the libraries loaded and due every GRPO rollout, runs only when a
        reference cycle keeps one alive."""
        if not self._dropped:
            return
        if any(model() is not None for model in self._dropped):
            gc.collect()
        self._dropped.clear()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def held(self) -> list[str]:
        """The specs of the models in memory now (besides the policy)."""
        return [spec for spec, _ in self._held]


def _movable(model: Model) -> bool:
    """Whether `model` can go to host memory and back whole: not spread over devices, not quantized."""
    return len(set(getattr(model, "hf_device_map", {}).values())) <= 1 and getattr(model, "hf_quantizer", None) is None


def _moved(held: tuple[Model, Processor], device: torch.device) -> tuple[Model, Processor]:
    """`held` with its model on `device` (moved in place; the accelerator's cache emptied after leaving it)."""
    model: torch.nn.Module = held[0]
    if next(model.parameters()).device != device:
        model.to(device)
        if device.type == "cpu" and torch.cuda.is_available():
            torch.cuda.empty_cache()
    return held


def check_backends(specs: list[str], models: ScopedModels) -> None:
    """Every model the run needs exists, and every API backend has its key and answers, before the first
    stage runs (not after hours of sampling)."""
    for spec in dict.fromkeys(specs):
        if spec.startswith("api:"):
            check_judge(models.endpoint(spec))
        else:
            resolve(spec)


def claim(store: RunStore, method: Method) -> None:
    """Record the method in run.json; a directory made by another method is refused."""
    marker = store.root / "run.json"
    info = read_json(marker) or {}
    if info.get("method") not in (None, method.name):
        raise ValueError(f"{store.root} holds a {info['method']} run; use another directory for {method.name}")
    write_json(marker, {**info, "method": method.name})


def round_prompts(store: RunStore, method: Method, config: RunConfig, k: int, processor: Processor | None) -> Stage:
    """Round k's prompts: fresh ones from the source (or round 1's again, for methods that reuse them)."""
    first = method.same_prompts
    stage = store.stage(f"round{1 if first else k}/prompts")
    offset = 0 if first else (k - 1) * config.prompts.per_round
    source = source_named(config.prompts.source)
    source.write(PromptRequest(store, stage, config.prompts.per_round, offset, config.prompts.parsed_options(),
                               processor, path=config.prompts.source, seed=config.seed))
    repeated = stage.manifest.get("repeated")
    if repeated:
        warn(f"round {k} reuses {repeated} prompt(s) of {config.prompts.source}, which has too few for "
             f"{config.rounds} rounds of {config.prompts.per_round}: the policy meets them again")
    return stage


def _examples(pairs: Stage | str | Sequence):
    if isinstance(pairs, Stage):
        return preference_examples(pairs)
    return examples_under(pairs) if isinstance(pairs, (str, Path)) else pairs  # a method's examples (groups)


def _refix(e: IncompleteCheckpoint, what: str) -> IncompleteCheckpoint:
    return IncompleteCheckpoint(e.path, e.problem, f"Delete {e.path} and run the same command again: {what} is "
                                f"trained again from its saved pairs (the stages before it are kept)")


def check_trained(folder: Path, what: str) -> None:
    """A model this run saved is still whole; one damaged since is named with the fix."""
    try:
        check_complete(folder)
    except IncompleteCheckpoint as e:
        raise _refix(e, what) from None


def load_trained(folder: Path, config: RunConfig, what: str) -> tuple[Model, Processor]:
    """(model, processor) this run saved, under the run's runtime; one damaged since is named with the fix."""
    try:
        return load(folder, config.runtime)
    except IncompleteCheckpoint as e:
        raise _refix(e, what) from None


def round_adapter(store: RunStore, k: int) -> tuple[Path, Path | None] | None:
    """Where round k's LoRA adapter is saved (stacked onto the rounds' before, on the first round's base, so
    a server can load it: `save_stacked_adapter`) and the one it stacks onto; None when round k-1 saved none
    (it trained in full), so no adapter of round k would fit the base."""
    previous = store.root / f"round{k - 1}" / "adapter"
    if k > 1 and not previous.exists():
        return None
    return store.root / f"round{k}" / "adapter", previous if k > 1 else None


def pairs_fingerprint(arm: Arm) -> str | None:
    """What the arm's pairs stage holds (as the main process reads it): an arm trained on other pairs, which a
    resume that asked failed items again can make, trains again."""
    pairs = arm.pairs
    return ranks.on_main(lambda: pairs.fingerprint()) if isinstance(pairs, Stage) else None


def train_arm(arm: Arm, model: Model, processor: Processor, folder: Path, config: RunConfig, models: ScopedModels,
              adapter: tuple[Path, Path | None] | None = None, evaluate: bool = True,
              carried: Carried | None = None) -> tuple[Model, dict]:
    """Train one arm into `folder`: train under its objective, merge, save, evaluate (unless `evaluate` is
    off). A LoRA arm's adapter is kept at `adapter` (out, previous) before the merge; `carried` is where its
    optimizer's state comes from and goes. An arm saved before a stop during its evaluation is loaded and
    evaluated, not trained again (unless its pairs changed since)."""
    record = finished(folder, TRAINED)
    if record is not None and record.get("pairs_fingerprint") in (None, pairs_fingerprint(arm)):
        model = load_trained(folder / "policy", config, f"the {arm.name} arm in {folder}")[0]
    else:
        model, record = fit_arm(arm, model, processor, folder, config, models, adapter, carried)
        ranks.on_main(lambda: write_json(folder / TRAINED, record))
    if config.eval and evaluate:
        record["eval"] = run_suite(model, processor, config.eval, folder / "eval", models.chat, config.seed)
    ranks.on_main(lambda: write_json(folder / "arm.json", record))
    return model, record


def carried_state(store: RunStore, k: int) -> Carried:
    """Where round k's first arm takes its optimizer's state from (the round before's), and leaves its own."""
    before = store.root / f"round{k - 1}" / "training" / OPTIMIZER if k > 1 else None
    return Carried(before, store.root / f"round{k}" / "training" / OPTIMIZER)


def fit_arm(arm: Arm, model: Model, processor: Processor, folder: Path, config: RunConfig, models: ScopedModels,
            adapter: tuple[Path, Path | None] | None = None, carried: Carried | None = None) -> tuple[Model, dict]:
    """Train one arm and save it into `folder`: (the trained model, the arm's record without its evaluation)."""
    pairs = pairs_fingerprint(arm)
    examples = _examples(arm.pairs)
    reference = arm.train.reference  # a model of its own, held for the training only (null: the policy)
    models.release()
    with models.using(reference) if reference else nullcontext((None, None)) as (reference_model, _):
        model, history = fit(model, processor, examples, arm.train, arm.objective, out=folder / "training",
                             reference=reference_model, gradient_checkpointing=config.runtime.gradient_checkpointing,
                             description="training", carried=carried)
    # the next round starts from (and refers to) the merged policy; a LoRA arm's adapter is kept beside it
    model = save_trained(model, processor, folder, config.runtime, adapter[1] if adapter else None)
    return model, {"arm": arm.name, "pairs": len(examples), "unit": arm.objective.unit, "checkpoint": str(folder / "policy"),
                   "final_loss": history[-1]["loss"], "final_reward_accuracy": history[-1].get("reward_accuracy"),
                   "pairs_fingerprint": pairs, **arm.stats}


def run_round(method: Method, config: RunConfig, store: RunStore, k: int, policy: Model, processor: Processor,
              start: str, models: ScopedModels) -> tuple[Model, dict]:
    """Round k: prompts, the method's arms, each trained from the round's starting policy. An arm already done
    is read back (the first arm's policy, which the next round starts from) and loads nothing else; the
    starting policy is loaded again only for an arm that trains after another arm changed it."""
    prompts = None if config.pairs_from else round_prompts(store, method, config, k, processor)
    arms = list(method.pairs(Round(k, config, store, prompts, policy, processor, models)))
    record: dict = {"round": k, "arms": {}}
    trained, pristine = policy, True
    for i, arm in enumerate(arms):
        folder = arm_folder(store.root / f"round{k}", i, arm.name)
        done = finished(folder, "arm.json")
        if done is not None and done.get("pairs_fingerprint") not in (None, pairs_fingerprint(arm)):
            done = None  # a resume asked failed items again and the pairs changed: the arm trains again
        if done is not None:
            record["arms"][arm.name] = done
            if i == 0:
                trained = load_trained(folder / "policy", config, f"the {arm.name} arm in {folder}")[0]
        else:
            shortfalls.require_pairs(arm.pairs, store.root, k, arm.name)
            base = policy if pristine else load(start, config.runtime)[0]
            pristine = False
            with scope(arm.name if i else "train"):
                model, record["arms"][arm.name] = train_arm(arm, base, processor, folder, config, models,
                                                            round_adapter(store, k) if i == 0 else None,
                                                            evaluate=config.evaluates(k),
                                                            carried=carried_state(store, k) if i == 0 and arm.carries
                                                            else None)
            if i == 0:
                trained = model
        if i == 0:
            record.update(record["arms"][arm.name])
    record.update(config=to_dict(config), shortfalls=shortfalls.of_round(store.root, k))
    ranks.on_main(lambda: write_json(store.root / f"round{k}" / "round.json", record))
    return trained, record


def run(method: Method, config: RunConfig, out: str | Path) -> dict:
    """Every round of `method` under `out`; returns (and writes to `out/summary.json`) the summary. The run
    directory is held for this process throughout (a second run on it stops at once, with `Busy`)."""
    problems = preflight.problems(config)
    if problems:
        raise ConfigError(problems, method.name)
    with preflight.nothing_left(out):  # a refused start leaves the directory as it found it
        store = RunStore(out)
        with store.lock():
            return _run(method, config, store)


def unfinished(store: RunStore, k: int) -> list[str]:
    """The stages of round k with failed items left (as the main process reads them)."""
    return ranks.on_main(lambda: store.unfinished(f"round{k}"))


def _run(method: Method, config: RunConfig, store: RunStore) -> dict:
    started = time.time()
    ranks.on_main(lambda: claim(store, method))
    run_record.check_config(store.root, config)
    run_record.say_resumed(store.root)
    models = ScopedModels(config.runtime, config.api)
    check_backends(config.backends(), models)
    assert config.policy is not None  # run() refuses a config without one (`problems`)
    if preflight.trials(config) and not (store.root / "round1" / "round.json").exists():
        # the feedback models answer the first of round 1's prompts before anything long runs
        prompts = round_prompts(store, method, config, 1, preflight.policy_processor(config))
        ranks.on_main(lambda: preflight.trial(config, models, prompts))
    run_record.record_start(store.root, config)
    start: str = config.policy
    loaded: tuple[Model, Processor] | None = None  # when a step needs it: a finished run resumes loading nothing
    summary: dict = {"method": method.name, "policy": config.policy, "rounds": []}
    if config.eval and config.eval_base:
        base = ranks.on_main(lambda: read_json(store.root / "base" / "eval.json"))
        if base is None:
            loaded = policy, processor = load(start, config.runtime)
            with scope(f"{method.name} base"):
                base = run_suite(policy, processor, config.eval, store.root / "base", models.chat, config.seed)
            ranks.on_main(lambda: write_json(store.root / "base" / "eval.json", base))
        summary["base"] = base
    for k in range(1, config.rounds + 1):
        folder = store.root / f"round{k}"
        record = whole_round(finished(folder, "round.json"), folder)
        failed = unfinished(store, k) if record is not None and k == config.rounds else []
        if failed:  # the last round's failed items are asked again (it trains again only if its pairs change)
            log(f"{method.name} round {k}: asking again for the items that failed in {', '.join(failed)}")
            record = None
        if record is None:
            if loaded is None:
                loaded = (load(start, config.runtime) if k == 1
                          else load_trained(Path(start), config, f"round {k - 1}"))
            policy, processor = loaded
            log(f"{method.name} round {k}/{config.rounds}")
            with scope(f"{method.name} round {k}"):
                policy, record = run_round(method, config, store, k, policy, processor, start, models)
            loaded = policy, processor
        else:  # done: checked (cheaply, no model is loaded) so a damaged checkpoint is named now
            loaded = None
            check_trained(folder / "policy", f"round {k}")
        summary["rounds"].append(record)
        start = str(folder / "policy")
    summary.update(final=start, config=to_dict(config), changes=run_record.round_changes(summary["rounds"]))
    summary = ranks.on_main(lambda: finish(store, summary, started, config.report))
    if config.hub.push:  # the run is whole on disk first: a failed push loses nothing (`vlalign push` retries it)
        summary = ranks.on_main(lambda: {**summary, "pushed": push_finished(store.root, start, config.hub)})
        ranks.on_main(lambda: write_json(store.root / "summary.json", summary))
    run_record.finished()
    log(f"{method.name}: final policy at {start}; summary at {store.root / 'summary.json'}")
    return summary


def finish(store: RunStore, summary: dict, started: float, report: bool) -> dict:
    """Write the summary (with the run's time, added to what earlier attempts took) and the report."""
    earlier = (read_json(store.root / "summary.json") or {}).get("seconds", 0.0)
    summary = {**summary, "seconds": round(earlier + time.time() - started, 1)}
    write_json(store.root / "summary.json", summary)
    if report:
        try_report(store.root)
    return summary
