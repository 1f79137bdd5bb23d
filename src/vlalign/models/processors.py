"""A VLM's processor from a saved directory, as the architecture's own class, and the prompt settings a run
gives it.

transformers builds Qwen2-VL, Qwen2.5-VL, LLaVA-OneVision, SmolVLM and LLaVA-NeXT-Video processors with a
video processor, and every video processor needs torchvision, which some machines cannot install beside
their torch (CPU builds here: PyPI's torchvision links CUDA libraries). `ProcessorMixin` type-checks every
part, so such a processor cannot even be built without one. Where no video processor can be had, the
processor is an image-only subclass that keeps the real class's name: it saves as the real class
(`processor_class: Qwen2VLProcessor`), loads back in a fresh process, passes `isinstance`, and handles
images with the real class's own code.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

from vlalign.models.settings import Runtime

VIDEO = "video_processor"


class NoVideo:
    """Where a processor expects a video processor: its defaults are None, and it refuses videos."""

    num_frames = fps = None

    def __call__(self, *args, **kwargs):
        raise ValueError("this processor was built without a video processor (torchvision is missing)")


def _drop_video_base():
    from transformers import ProcessorMixin

    class DropVideo(ProcessorMixin):
        """Between the real class and ProcessorMixin: takes what the real `__init__` passes up (in its own
        attribute order: LLaVA-NeXT-Video passes the video processor first) and forwards all but the video."""

        def __init__(self, *args, **kwargs):
            named = dict(zip(type(self).full_attributes, args, strict=False))
            named.update(kwargs)
            named.pop(VIDEO, None)
            ProcessorMixin.__init__(self, **named)

        # SmolVLM's apply_chat_template reads its video processor's defaults even for images only (a class
        # attribute, so that saving leaves it out)
        video_processor = NoVideo()

    return DropVideo


@functools.cache
def image_only(cls: type) -> type:
    """`cls` itself when it has no video processor, else a subclass of the same name without one."""
    full = cls.get_attributes()
    if VIDEO not in full:
        return cls
    kept = [a for a in full if a != VIDEO]

    def get_attributes(c):
        return list(kept)

    def _get_arguments_from_pretrained(c, path, processor_dict=None, **kwargs):
        loaded = dict(zip(kept, super(sub, c)._get_arguments_from_pretrained(path, processor_dict, **kwargs),
                          strict=True))
        return [loaded.get(a) for a in full]  # the real __init__'s positional order, the video part None

    def from_args_and_dict(c, args, processor_dict, **kwargs):
        return super(sub, c).from_args_and_dict(args, {k: v for k, v in processor_dict.items() if k != VIDEO},
                                                **kwargs)

    def from_dict(c, processor_dict, **kwargs):  # newer transformers (5.25) build from the dict, by keyword
        return super(sub, c).from_dict({**processor_dict, VIDEO: None}, **kwargs)

    sub = type(cls.__name__, (cls, _drop_video_base()), {
        "__module__": __name__, "__qualname__": cls.__qualname__, "full_attributes": tuple(full),
        "get_attributes": classmethod(get_attributes),
        "_get_arguments_from_pretrained": classmethod(_get_arguments_from_pretrained),
        "from_args_and_dict": classmethod(from_args_and_dict), "from_dict": classmethod(from_dict)})
    return sub


def make_processor(cls: type, **parts):
    """Build the processor `cls` from its parts in code; without a video processor among them, the video
    half is left out (see the module docstring)."""
    if parts.get(VIDEO) is None and VIDEO in cls.get_attributes():
        parts[VIDEO] = None
        return image_only(cls)(**parts)
    return cls(**parts)


def _saved_class(directory: Path):
    """The processor class a directory names (an `ImageOnly` prefix of older saves dropped), else the one
    its model config maps to; None when neither is a transformers class."""
    from transformers import AutoConfig
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING, processor_class_from_name

    file = directory / "processor_config.json"
    if file.exists():
        name = json.loads(file.read_text()).get("processor_class")
        if name and (cls := processor_class_from_name(name.removeprefix("ImageOnly"))) is not None:
            return cls
    try:
        return PROCESSOR_MAPPING[type(AutoConfig.from_pretrained(directory))]
    except (KeyError, ValueError, OSError):
        return None


def _has_video_config(directory: Path) -> bool:
    if (directory / "video_preprocessor_config.json").exists():
        return True
    file = directory / "processor_config.json"
    return file.exists() and VIDEO in json.loads(file.read_text())


def load_processor(directory: str | Path, trust_remote_code: bool = False):
    """The processor saved in `directory`, as its own class (image-only where no video processor can load)."""
    from transformers import AutoProcessor
    from transformers.utils import is_torchvision_available

    directory = Path(directory)
    cls = _saved_class(directory)
    if cls is None:
        return AutoProcessor.from_pretrained(directory, trust_remote_code=trust_remote_code)
    if VIDEO in cls.get_attributes() and not (is_torchvision_available() and _has_video_config(directory)):
        cls = image_only(cls)
    return cls.from_pretrained(directory)


def chat_template(processor, choice: str) -> str:
    """The Jinja text `runtime.chat_template` names: one of the processor's own named templates (a checkpoint
    may ship several: chat_template.jinja is "default", additional_chat_templates/NAME.jinja the others), a
    .jinja file, or Jinja text itself."""
    own = processor.chat_template if isinstance(processor.chat_template, dict) else {}
    if choice in own:
        return own[choice]
    if "{{" in choice or "{%" in choice:
        return choice
    path = Path(choice).expanduser()
    if path.is_file():
        return path.read_text(encoding="utf-8")
    names = ", ".join(sorted(own)) or "none besides its default"
    raise ValueError(f"runtime.chat_template {choice!r} is not one of this processor's named templates ({names}), "
                     f"an existing .jinja file, or Jinja text")


def configure(processor, runtime: Runtime):
    """Apply a run's prompt settings to a processor: a chat template override, the system prompt and the
    lengths of rows (read where prompts are built, `vlalign.models.batching`)."""
    if runtime.chat_template:
        processor.chat_template = chat_template(processor, runtime.chat_template)
    processor.vlalign_system_prompt = runtime.system_prompt
    processor.vlalign_max_length = runtime.max_length
    processor.vlalign_max_prompt_length = runtime.max_prompt_length
    processor.vlalign_max_completion_length = runtime.max_completion_length
    if runtime.system_prompt:
        from vlalign.models.batching import chat_prompt

        if runtime.system_prompt not in chat_prompt(processor, "?", with_image=False):
            raise ValueError("this model's chat template drops the system message, so system_prompt would be "
                             "ignored; set runtime.chat_template to one with a system role, or put the text in "
                             "the instructions")
    return processor
