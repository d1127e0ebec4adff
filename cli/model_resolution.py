"""Turning the `--model M` of `chat` and `generate` into a loaded model, without any network.

M is tried, in order, as: an existing file (a compact file from `tinyexaone quantize`; the loader
tells a file's kind from its first bytes); an existing
Hugging Face model directory (config.json + safetensors); a Hugging Face repo id `ORG/NAME`
looked up in the local Hugging Face cache, `HF_HUB_CACHE`, else `HF_HOME/hub`, else
`~/.cache/huggingface/hub` (layout `models--ORG--NAME/snapshots/<revision>/`; the revision
named by `refs/main` is preferred, else the newest snapshot holding a config.json). Without M
the shipped demo model is used: `default_model_path()` looks for `exaone4-demo` as package data
of `tinyexaone.models` (models/ of the checkout, installed as tinyexaone/models/) first, then in
the source checkout next to the `tinyexaone` package. Every failure is a one-line
`TinyExaoneError` naming what was looked for and where.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import tinyexaone
from tinyexaone.errors import TinyExaoneError

DEMO_MODEL_NAME = "exaone4-demo"
REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class ResolvedModel:
    path: Path  # a compact file or a Hugging Face model directory
    kind: str  # "compact file" | "Hugging Face directory" | "from the Hugging Face cache"
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


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache directory, as huggingface_hub resolves it (no network involved)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    cache_home = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache_home).expanduser() / "huggingface" / "hub"


def _snapshot(repo_dir: Path) -> Path | None:
    """The snapshot refs/main points at if it holds a model, else the newest snapshot that does."""
    snapshots = repo_dir / "snapshots"
    ref = repo_dir / "refs" / "main"
    if ref.is_file():
        try:
            revision = ref.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            revision = ""
        if revision and "/" not in revision and _is_model_directory(snapshots / revision):
            return snapshots / revision
    if not snapshots.is_dir():
        return None
    usable = [s for s in snapshots.iterdir() if _is_model_directory(s)]
    return max(usable, key=lambda s: s.stat().st_mtime) if usable else None


def resolve_in_hub_cache(repo_id: str) -> Path:
    """The local snapshot directory of `repo_id` (ORG/NAME) in the Hugging Face cache."""
    hub = hub_cache_dir()
    org, name = repo_id.split("/")
    repo_dir = hub / f"models--{org}--{name}"
    if not repo_dir.is_dir():
        raise TinyExaoneError(f"{repo_id}: no such file or directory, and no such model in the Hugging Face cache "
                              f"{hub} (tinyexaone never downloads: fetch it first, e.g. `hf download {repo_id}`)")
    snapshot = _snapshot(repo_dir)
    if snapshot is None:
        raise TinyExaoneError(f"{repo_id}: the Hugging Face cache entry {repo_dir} holds no complete snapshot "
                              f"(no snapshots/<revision>/config.json); download it again")
    return snapshot


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
        return ResolvedModel(path, "compact file", spec, False)
    if path.is_dir():
        if not (path / "config.json").exists():
            raise TinyExaoneError(f"{spec}: not a model directory (no config.json)")
        return ResolvedModel(path, "Hugging Face directory", spec, False)
    if path.exists():
        raise TinyExaoneError(f"{spec}: not a model (neither a file nor a directory)")
    if REPO_ID.match(spec) and not spec.startswith((".", "~")):
        return ResolvedModel(resolve_in_hub_cache(spec), "from the Hugging Face cache", spec, False)
    raise TinyExaoneError(f"{spec}: no such file or directory")


def load_model(spec: str | None, chat_template: bool = True):
    """(Model, ResolvedModel) for `--model spec`; the model must have a tokenizer, and a chat
    template unless `chat_template` is False (raw text generation)."""
    resolved = resolve_model(spec)
    model = tinyexaone.load(resolved.path)
    if model.tokenizer is None:
        raise TinyExaoneError(f"{resolved.label}: the model has no tokenizer (tokenizer.json), so it cannot "
                              f"turn text into tokens")
    if chat_template and model.tokenizer.chat_template_source is None:
        raise TinyExaoneError(f"{resolved.label}: the model has no chat template (chat_template.jinja or "
                              f"tokenizer_config.json); use `tinyexaone generate --raw` to continue plain text")
    return model, resolved
