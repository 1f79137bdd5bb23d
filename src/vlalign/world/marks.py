"""The report's highlights on world answers: the objects an answer names that its scene does not hold.

A shape the scene lacks is hallucinated (what CHAIR counts); a shape it holds, named in a colour no object
of that shape has, is a wrong attribute (what grounded recall leaves out).
"""

from __future__ import annotations

from vlalign.data.records import PromptRecord
from vlalign.report.marks import Mark
from vlalign.world.metrics import mentions
from vlalign.world.scene import Scene
from vlalign.world.text import word_spans


def scene_marks(answer: str, prompt: PromptRecord) -> list[Mark] | None:
    """Marks on `answer` from the scene graph of a world prompt (`meta.scene`); None for other prompts."""
    if not isinstance(prompt.meta.get("scene"), dict):
        return None
    scene = Scene.from_dict(prompt.meta["scene"])
    spans = word_spans(answer)
    colors = {o.shape: set() for o in scene.objects}
    for o in scene.objects:
        colors[o.shape].add(o.color)
    out = []
    for m in mentions([w for w, _, _ in spans]):
        start, end = spans[m.first][1], spans[m.last][2]
        if m.shape not in colors:
            out.append(Mark(start, end, "hallucinated", f"no {m.shape} in the scene"))
        elif m.color is not None and m.color not in colors[m.shape]:
            out.append(Mark(start, end, "attribute",
                            f"no {m.color} {m.shape} in the scene (its {m.shape}: {', '.join(sorted(colors[m.shape]))})"))
    return out
