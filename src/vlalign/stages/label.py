"""Claims and their labeler (RLAIF-V's divide and conquer): each answer is split into atomic claims, each
claim asked back as a yes/no question, and a labeler's P(yes) decides it; an answer's score is minus its
rejected claims. `labeled_pairs` composes the round: sample, label, pair.

The labeler is a separate model (held for the labeling stage only), a server (`api:`), or the policy itself
(`labeler: self`, self-alignment); the llm splitter's judge is held likewise.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

from vlalign.data.records import FeedbackRecord, ResponseRecord
from vlalign.data.store import RunStore, Stage, batch_result, run_stage
from vlalign.feedback.claims import ClaimSplitter
from vlalign.feedback.judge import decoded
from vlalign.feedback.splitters import make_splitter, needs_judge
from vlalign.stages.pairs import pair_stage
from vlalign.stages.ratings import UsageMeter
from vlalign.stages.round import Round
from vlalign.stages.sample import sampled
from vlalign.stages.settings import SELF, LabeledConfig


@dataclass(frozen=True)
class Labeler:
    """Who answers the claim questions: a model and its processor, or a server (no processor), and the name
    the feedback records carry."""

    model: Any
    processor: Any
    name: str


@contextmanager
def labeler_of(r: Round[LabeledConfig]) -> Iterator[Labeler]:
    """The round's labeler, held while the block runs: the policy (`self`), a server, or a model."""
    c = r.config
    assert c.labeler is not None  # the config's problems() refuses a run without one
    if c.labeler == SELF:
        yield Labeler(r.policy, r.processor, r.policy_name)
    elif c.labeler.startswith("api:"):
        from vlalign.feedback.server_backends import ApiLabeler

        with r.models.chat(c.labeler) as server:
            yield Labeler(ApiLabeler(server, server.name), None, server.name)
    else:
        with r.models.using(c.labeler, c.labeler_runtime) as (model, processor):
            yield Labeler(model, processor, c.labeler)


@contextmanager
def splitter_of(r: Round[LabeledConfig]) -> Iterator[ClaimSplitter]:
    """The claim splitter the config names, with its judge held while the block runs when it asks one."""
    c = r.config
    spec = c.judge if needs_judge(c.splitter) else None
    with r.models.chat(spec, c.judge_runtime) if spec else nullcontext() as judge:
        yield make_splitter(c.splitter, decoded(judge, c.judge_decoding) if judge is not None else None)


def label_stage(store: RunStore, responses: Stage, out: Stage, labeler: Labeler, split: ClaimSplitter,
                batch_size: int = 64) -> Stage:
    """Claims of every response, each scored by the labeler's P(yes); score = -(rejected claims). A response
    the splitter gives no claims for fails alone (logged, and asked again on resume)."""
    from vlalign.feedback.labeler import label_each, labeling_usage  # torch: kept out of the config check

    items = [ResponseRecord.from_row(r) for r in responses.rows()]

    def process(batch: list[ResponseRecord]) -> list[dict]:
        fb = label_each(labeler.model, labeler.processor, [store.images.get(r.image) for r in batch],
                        [r.response for r in batch], split, batch_size=batch_size,
                        instructions=[r.instruction for r in batch], keys=[r.id for r in batch])
        errors: dict[int, BaseException] = {i: f for i, f in enumerate(fb) if isinstance(f, Exception)}
        return batch_result([FeedbackRecord(id=r.id, response_id=r.id, prompt_id=r.prompt_id, score=f.score,
                                            details=f.to_dict(), meta={"labeler": labeler.name}).to_row()
                             for r, f in zip(batch, fb, strict=True) if not isinstance(f, Exception)], errors)

    run_stage(out, items, process, id_of=lambda r: r.id, batch_size=batch_size, shard_size=1024,
              description="labeling", manifest={"model": labeler.name, "config": {"splitter": type(split).__name__}},
              meters=[UsageMeter(out, backend, key) for key, backend in labeling_usage(labeler.model, split).items()])
    return out


def labeled_pairs(r: Round[LabeledConfig]) -> tuple[Stage | str, dict]:
    """Sample, label and pair one round (RLAIF-V's pairs; mDPO and MPO train on the same), and what the round
    reports of them; or the pairs `pairs_from` names."""
    c = r.config
    if r.given_pairs:
        return r.given_pairs, {}
    responses = sampled(r, r.stage("responses"))
    with ExitStack() as held:
        labeler = held.enter_context(labeler_of(r))
        split = held.enter_context(splitter_of(r))
        feedback = label_stage(r.store, responses, r.stage("feedback"), labeler, split, c.batch_size)
    pairs = pair_stage(responses, feedback, r.stage("pairs"), c.rules, method="rlaif_v")
    scores = [f["score"] for f in feedback.rows() if f["score"] is not None]
    stats = {"responses": responses.counts()["rows"], "mean_score": sum(scores) / len(scores) if scores else None,
             "selection": pairs.manifest.get("selection")}
    return pairs, stats
