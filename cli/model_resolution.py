"""Turning the `--model M` of `chat` and `generate` into a loaded model.

M is tried, in order, as: an existing file (a compact file from `tinyexaone quantize` or a GGUF
file; the loader tells a file's kind from its first bytes); an existing Hugging Face model
directory (config.json + safetensors); a Hugging Face Hub reference `ORG/NAME[:TAG][@REVISION]`
(tinyexaone/hub.py), taken from the local Hugging Face cache when it holds the model, else
downloaded into it (not with HF_HUB_OFFLINE set). Without M the shipped demo model is used:
`default_model_path()` looks for `exaone4-demo` as package data of `tinyexaone.models` (models/ of
the checkout, installed as tinyexaone/models/) first, then in the source checkout next to the
`tinyexaone` package. Every failure is a one-line `TinyExaoneError` naming what was looked for
and where.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import tinyexaone
from tinyexaone import hub
from tinyexaone.errors import TinyExaoneError
from tinyexaone.gguf_source import is_gguf

DEMO_MODEL_NAME = "exaone4-demo"


@dataclass(frozen=True)
class ResolvedModel:
    path: Path  # a compact file, a GGUF file or a Hugging Face model directory
    kind: str  # "compact file" | "GGUF file" | "Hugging Face directory" | "from the Hugging Face cache" | ...
    label: str  # what to call it in a banner: the name the user gave, or the demo model's name
    shipped: bool  # True when no --model was given and the shipped demo model is used


def _is_model_directory(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


def default_model_path() -> Path | None:
    """The shipped demo model directory: package data of the installed package, else the checkout."""
    candidates = []
    try:
        candidates.append(Path(str(resources.files("tinyexaone.models") / DEMO_MODEL_NAME)))
    except (ModuleNotFoundError, TypeError):  # an install without the models package
        pass
    candidates.append(Path(tinyexaone.__file__).resolve().parent.parent / "models" / DEMO_MODEL_NAME)
    for candidate in candidates:
        if _is_model_directory(candidate):
            return candidate
    return None


def resolve_model(spec: str | None) -> ResolvedModel:
    """What `--model spec` names (None: the shipped demo model)."""
    if spec is None:
        path = default_model_path()
        if path is None:
            raise TinyExaoneError(f"no --model given and the shipped demo model models/{DEMO_MODEL_NAME} is not "
                                  f"installed; pass --model PATH_OR_REPO_ID")
        return ResolvedModel(path, "Hugging Face directory", DEMO_MODEL_NAME, True)
    if not spec.strip():
        raise TinyExaoneError("--model is empty")
    path = Path(spec).expanduser()
    if path.is_file():  # what kind of file it is, the loader finds out from its first bytes
        return ResolvedModel(path, "GGUF file" if is_gguf(path) else "compact file", spec, False)
    if path.is_dir():
        if not (path / "config.json").exists():
            raise TinyExaoneError(f"{spec}: not a model directory (no config.json)")
        return ResolvedModel(path, "Hugging Face directory", spec, False)
    if path.exists():
        raise TinyExaoneError(f"{spec}: not a model (neither a file nor a directory)")
    reference = hub.parse_reference(spec)
    if reference is not None:
        found = hub.resolve(reference)
        kind = "downloaded from the Hugging Face Hub" if found.downloaded else "from the Hugging Face cache"
        return ResolvedModel(found.path, kind, spec, False)
    raise TinyExaoneError(f"{spec}: no such file or directory")


def load_model(spec: str | None, chat_template: bool = True, mmap: bool = False):
    """(Model, ResolvedModel) for `--model spec`; the model must have a tokenizer, and a chat
    template unless `chat_template` is False (raw text generation); `mmap` is --mmap."""
    resolved = resolve_model(spec)
    model = tinyexaone.load(resolved.path, mmap=mmap)
    if model.tokenizer is None:
        raise TinyExaoneError(f"{resolved.label}: the model has no tokenizer (tokenizer.json, or tokenizer.* "
                              f"metadata in a GGUF), so it cannot turn text into tokens")
    if chat_template and model.tokenizer.chat_template_source is None:
        raise TinyExaoneError(f"{resolved.label}: the model has no chat template (chat_template.jinja, "
                              f"tokenizer_config.json or a GGUF's tokenizer.chat_template); use `tinyexaone generate "
                              f"--raw` to continue plain text")
    return model, resolved
