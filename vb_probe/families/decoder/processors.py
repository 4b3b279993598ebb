"""A decoder checkpoint's own processor, loaded as transformers loads it, even where its video half cannot load.

The trap: the processors of Qwen2-VL, Qwen2.5-VL, Qwen3-VL, InternVL, SmolVLM and LLaVA-OneVision hold a video
processor, which transformers builds only with torchvision; where torchvision is missing (or is a CUDA build beside
a CPU torch) ``AutoProcessor`` fails for a model whose images need nothing of it. Re-writing the processor's prompt
expansion by hand would be a second copy of its geometry, free to drift from it.
The mechanism: :func:`images_only` subclasses the checkpoint's own processor class with the video processor left
out of its declared parts, so the class's own ``__init__`` and ``__call__`` (image sizing, the expansion of the image
placeholder, ``mm_token_type_ids``) run unchanged on its own image processor and tokenizer; only videos are refused.
The cost: nothing at run time; a processor built this way cannot process video, which vb-probe never asks of it.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

from vb_probe.errors import CheckpointError

VIDEO_PART = "video_processor"


def images_only(processor_class: type) -> type:
    """``processor_class`` without its video processor: the same ``__init__`` and ``__call__``, the video part left
    out of the parts transformers checks and saves."""

    class ImagesOnly(processor_class):
        @classmethod
        def get_attributes(cls):
            return [name for name in super().get_attributes() if name != VIDEO_PART]

    ImagesOnly.__name__ = ImagesOnly.__qualname__ = processor_class.__name__
    return ImagesOnly


def _for_want_of_torchvision(exc: BaseException) -> bool:
    """Whether a processor failed to load because of its video half: it needs torchvision (absent, or not this
    torch's), or it was saved without one (as :func:`images_only` saves it)."""
    text = " ".join(repr(e) for e in (exc, exc.__cause__, exc.__context__)).lower()
    return any(sign in text for sign in ("torchvision", "video_processor_mapping", "video processor", "videoprocessor"))


def load_processor(folder: Path, model_type: str, processor_class: str | None):
    """``folder``'s processor: ``AutoProcessor`` as transformers loads it; where that fails for want of torchvision and
    the model's processor holds a video part (``processor_class``, transformers' class name), the same class built
    :func:`images_only` from the folder's image processor, tokenizer, chat template and processor settings. Returns
    (processor, note or None)."""
    import transformers

    try:
        return transformers.AutoProcessor.from_pretrained(str(folder)), None
    except Exception as exc:  # many types: a missing file, a missing optional dependency
        failure = exc
    if processor_class is None or not _for_want_of_torchvision(failure):
        _refuse_missing_package(folder, failure)
        if _for_want_of_torchvision(failure):
            raise CheckpointError(f"{folder}: its processor cannot load: the installed torchvision does not match "
                                  "torch (a CUDA build beside a CPU torch, or another release); uninstall torchvision "
                                  "or install the one built for this torch") from None
        raise CheckpointError(f"{folder}: cannot load its processor ({type(failure).__name__}); a {model_type} "
                              "checkpoint needs its preprocessor_config.json (or processor_config.json) and "
                              "tokenizer files") from None
    try:
        image_processor = transformers.AutoImageProcessor.from_pretrained(str(folder))
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder))
        cls = images_only(getattr(transformers, processor_class))
        accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "image_processor", "tokenizer",
                                                                       VIDEO_PART, "args", "kwargs"}
        settings = {k: v for k, v in _processor_settings(folder).items() if k in accepted}
        chat = getattr(tokenizer, "chat_template", None)
        if chat and "chat_template" in accepted:
            settings.setdefault("chat_template", chat)
        processor = cls(image_processor=image_processor, tokenizer=tokenizer, video_processor=None, **settings)
    except Exception as exc:
        _refuse_missing_package(folder, exc)
        raise CheckpointError(f"{folder}: cannot load its image processor and tokenizer ({type(exc).__name__}: "
                              f"{' '.join(str(exc).split())[:80]}); a {model_type} checkpoint needs "
                              "preprocessor_config.json and tokenizer files") from None
    return processor, (f"{processor_class}'s video processor needs torchvision (not usable here); the processor's "
                       "own class is used for images, without its video half")


def _refuse_missing_package(folder: Path, failure: BaseException) -> None:
    """A processor that needs a package other than torchvision (SmolVLM's num2words) is refused naming it."""
    if isinstance(failure, ImportError) and not _for_want_of_torchvision(failure):
        said = " ".join(str(failure).split())[:160]
        raise CheckpointError(f"{folder}: its processor needs a package that is not installed ({said}); install it "
                              "(pip install 'vb-probe[smolvlm]' for SmolVLM)") from None


def _processor_settings(folder: Path) -> dict:
    """The processor's own settings saved beside it (``processor_config.json``: e.g. InternVL's image_seq_length)."""
    path = Path(folder) / "processor_config.json"
    if not path.is_file():
        return {}
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return settings if isinstance(settings, dict) else {}


__all__ = ["images_only", "load_processor"]


class _TextRecorder:
    """Stands for a processor's tokenizer during one call: every attribute is the tokenizer's, and the text the
    processor hands it (its prompt with the image placeholder already expanded) is kept."""

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer
        self.texts: list = []

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)

    def __call__(self, text=None, *args, **kwargs):
        self.texts.append(text)
        return self._tokenizer(text, *args, **kwargs)


def process_with_text(processor, **inputs) -> tuple[dict, str | None]:
    """``processor(**inputs)`` and the text it gave its tokenizer: the prompt as the processor expanded it (the image
    placeholder replaced by the image's tokens, markers and newlines), so that a longer prompt can be tokenized as
    one string exactly as the processor would tokenize it. None when the processor tokenized no text."""
    tokenizer = processor.tokenizer
    recorder = _TextRecorder(tokenizer)
    processor.tokenizer = recorder
    try:
        out = dict(processor(**inputs))
    finally:
        processor.tokenizer = tokenizer
    texts = [t for t in recorder.texts if t is not None]
    if not texts:
        return out, None
    first = texts[0]
    return out, first[0] if isinstance(first, (list, tuple)) else first
