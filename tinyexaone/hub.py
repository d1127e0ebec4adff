"""Models named by Hugging Face Hub repo id: taken from the local cache, or downloaded with huggingface_hub.

A reference is `ORG/NAME[:TAG][@REVISION]` (`parse_reference`): a repo id, for a GGUF repository
the file to take (`:Q8_0` picks the `.gguf` file whose name ends in `-Q8_0.gguf`; without a tag,
Q8_0, then Q4_0, then Q4_K_M, else the first: Q8_0 and Q4_0 load exactly, see gguf_source.py),
and a branch, tag or commit (default `main`).

`resolve(ref)` (what `--model` and `tinyexaone.load` use) looks in the Hugging Face cache first,
with no network at all when a complete snapshot is there: a model directory with config.json and
every safetensors file its index lists, or the wanted GGUF file. It is found as huggingface_hub
lays the cache out (`HF_HUB_CACHE`, else `HF_HOME/hub`, else `~/.cache/huggingface/hub`;
`models--ORG--NAME/snapshots/<commit>/`, `refs/<revision>` naming the commit; without a revision,
the newest complete snapshot that no other ref names, when `refs/main` names none). Otherwise, and always for `pull(ref)`,
it asks the Hub (`HF_ENDPOINT`, authenticated by `HF_TOKEN` or the saved login) for the revision's
file list and downloads, through `hf_hub_download` with its progress bars, only what running
needs: config.json, generation_config.json, the tokenizer files, chat_template.jinja, the
safetensors index and the shards it lists (or model.safetensors), or the one GGUF file.
huggingface_hub keeps a cut download as `.incomplete` and resumes it with a Range request. With
`HF_HUB_OFFLINE` set nothing is downloaded. Environment variables are read when called, not when
imported. Every failure (no such repo or revision, gated repo, no network, offline and not
cached, disk full) is one `TinyExaoneError` line saying what is missing and how to get it.
"""

from __future__ import annotations

import errno
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from .errors import TinyExaoneError

REFERENCE = re.compile(r"^(?P<repo>[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*)"
                       r"(?::(?P<tag>[A-Za-z0-9._-]+))?(?:@(?P<revision>[A-Za-z0-9._/-]+))?$")
REVISION = re.compile(r"^[A-Za-z0-9._/-]+$")
RUN_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
             "special_tokens_map.json", "chat_template.jinja")
INDEX = "model.safetensors.index.json"
WEIGHTS = "model.safetensors"
GGUF_PREFERENCE = ("Q8_0", "Q4_0", "Q4_K_M")
SPLIT_GGUF = re.compile(r"-\d{5}-of-\d{5}\.gguf$")
DEFAULT_ENDPOINT = "https://huggingface.co"
DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS)


@dataclass(frozen=True)
class HubReference:
    repo_id: str
    tag: str | None = None  # a GGUF repository's file, e.g. "Q8_0"
    revision: str | None = None  # branch, tag or commit; None is main

    def __str__(self) -> str:
        return self.repo_id + (f":{self.tag}" if self.tag else "") + (f"@{self.revision}" if self.revision else "")


@dataclass(frozen=True)
class HubModel:
    path: Path  # a snapshot directory, or a GGUF file in one
    reference: HubReference
    commit: str
    downloaded: bool  # False when the cache already held everything


def parse_reference(text: str, revision: str | None = None) -> HubReference | None:
    """The reference `text` spells, or None when it is not shaped like one; `revision` (from a
    --revision flag) overrides an @REVISION in the text."""
    match = REFERENCE.match(text)
    if match is None or text.startswith((".", "~")) or ".." in text:
        return None
    revision = revision or match["revision"]
    if revision is not None and (not REVISION.match(revision) or ".." in revision):
        raise TinyExaoneError(f"--revision {revision[:60]!r} is not a branch, tag or commit name")
    return HubReference(match["repo"], match["tag"], revision)


def hub_cache_dir() -> Path:
    """The hub cache directory, as huggingface_hub resolves it (read now, not at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    cache_home = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache_home).expanduser() / "huggingface" / "hub"


def offline() -> bool:
    from huggingface_hub.constants import ENV_VARS_TRUE_VALUES

    return any((os.environ.get(name) or "").upper() in ENV_VARS_TRUE_VALUES
               for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def repo_cache_dir(repo_id: str) -> Path:
    return hub_cache_dir() / ("models--" + repo_id.replace("/", "--"))


# --- what a snapshot must hold -------------------------------------------------------------------


def pick_gguf(names, tag: str | None, repo: str) -> str | None:
    """The GGUF file of `names` that `tag` names (module doc), None when there is no GGUF at all."""
    ggufs = sorted(name for name in names if name.endswith(".gguf") and "mmproj" not in name.lower())
    if not ggufs:
        return None
    for wanted in ([tag] if tag else GGUF_PREFERENCE):
        pattern = re.compile(rf"(^|[-_./]){re.escape(wanted)}\.gguf$", re.IGNORECASE)
        chosen = [name for name in ggufs if pattern.search(name)]
        if chosen:
            break
    else:
        if tag:
            tags = ", ".join(sorted({Path(name).stem.rsplit("-", 1)[-1] for name in ggufs}))
            raise TinyExaoneError(f"{repo}: no GGUF file for tag '{tag}' (this repository has: {tags})")
        chosen = ggufs
    if SPLIT_GGUF.search(chosen[0]):
        raise TinyExaoneError(f"{repo}: {chosen[0]} is one part of a split GGUF, which tinyexaone does not read; "
                              f"merge the parts with llama.cpp's `llama-gguf-split --merge`")
    return chosen[0]


def _missing_weights(snapshot: Path) -> list[str]:
    """The safetensors files a model directory still lacks (empty when complete)."""
    if (snapshot / WEIGHTS).is_file():
        return []
    if not (snapshot / INDEX).is_file():
        return [WEIGHTS]
    try:
        shards = sorted(set(json.loads((snapshot / INDEX).read_text(encoding="utf-8"))["weight_map"].values()))
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError):
        return [INDEX]
    return [shard for shard in shards if not isinstance(shard, str) or not (snapshot / shard).is_file()]


def _complete(snapshot: Path, tag: str | None, repo: str) -> Path | None:
    """The model `snapshot` holds (itself, or its GGUF file) when complete, else None."""
    if not snapshot.is_dir():
        return None
    if (snapshot / "config.json").is_file():
        return snapshot if not _missing_weights(snapshot) and tag is None else None
    try:
        name = pick_gguf((str(p.relative_to(snapshot)) for p in snapshot.rglob("*.gguf")), tag, repo)
    except TinyExaoneError:  # not this tag (the Hub may have it) or a split file (downloading says so)
        return None
    return snapshot / name if name is not None else None


def _cached(reference: HubReference) -> tuple[Path, str] | None:
    """(model path, commit) of a complete cached snapshot for `reference`, or None."""
    repo_dir = repo_cache_dir(reference.repo_id)
    snapshots = repo_dir / "snapshots"
    revision = reference.revision or "main"
    commit = None
    ref = repo_dir / "refs" / revision
    if ref.is_file():
        try:
            commit = ref.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            commit = None
    elif (snapshots / revision).is_dir():
        commit = revision
    if commit and "/" not in commit and (found := _complete(snapshots / commit, reference.tag, reference.repo_id)):
        return found, commit
    if reference.revision is None and snapshots.is_dir():
        # no usable refs/main: the newest complete snapshot that no other ref names
        named = set()
        for other in (repo_dir / "refs").rglob("*") if (repo_dir / "refs").is_dir() else ():
            if other.is_file() and other.name != "main":
                try:
                    named.add(other.read_text(encoding="utf-8").strip())
                except (OSError, UnicodeDecodeError):
                    pass
        usable = [(s, found) for s in snapshots.iterdir()
                  if s.name not in named and (found := _complete(s, reference.tag, reference.repo_id)) is not None]
        if usable:
            snapshot, found = max(usable, key=lambda pair: pair[0].stat().st_mtime)
            return found, snapshot.name
    return None


# --- downloading -------------------------------------------------------------------------------------


def _hub_error(exc: Exception, reference: HubReference, what: str) -> TinyExaoneError:
    """One line for an exception of huggingface_hub (or its HTTP client) while `what`."""
    from huggingface_hub import errors

    repo, where = reference.repo_id, endpoint()
    if isinstance(exc, errors.GatedRepoError):
        return TinyExaoneError(f"{repo} is a gated repository: accept its terms on {where}/{repo} and set HF_TOKEN "
                               f"(or run `hf auth login`)")
    if isinstance(exc, errors.RepositoryNotFoundError):
        return TinyExaoneError(f"{repo}: no such model repository on {where} (if it is private, set HF_TOKEN)")
    if isinstance(exc, errors.RevisionNotFoundError):
        return TinyExaoneError(f"{repo}: no revision '{reference.revision}' on {where} (a branch, tag or commit)")
    if isinstance(exc, errors.EntryNotFoundError):
        return TinyExaoneError(f"{repo}: a file it lists is missing on {where} while {what}")
    if isinstance(exc, errors.HfHubHTTPError):
        status = exc.response.status_code if getattr(exc, "response", None) is not None else "an error"
        return TinyExaoneError(f"{repo}: {where} answered {status} while {what}")
    if isinstance(exc, OSError) and exc.errno in DISK_ERRORS:
        return TinyExaoneError(f"{repo}: cannot write to the Hugging Face cache {hub_cache_dir()} while {what} "
                               f"({exc.strerror})")
    reason = " ".join(str(exc).split())[:160] or type(exc).__name__
    return TinyExaoneError(f"{repo}: cannot reach {where} while {what} ({reason}); it is not complete in the Hugging "
                           f"Face cache {hub_cache_dir()}: connect to the network, or copy the model there")


def _files_to_fetch(names: set[str], reference: HubReference) -> list[str]:
    if "config.json" not in names:
        gguf_file = pick_gguf(names, reference.tag, reference.repo_id)
        if gguf_file is None:
            raise TinyExaoneError(f"{reference.repo_id}: the repository has neither a config.json nor GGUF files; "
                                  f"it is not a model tinyexaone can run")
        return [gguf_file]
    if reference.tag:
        raise TinyExaoneError(f"{reference.repo_id}: ':{reference.tag}' picks a GGUF file, and this repository holds "
                              f"a Hugging Face model (drop the tag)")
    if INDEX not in names and WEIGHTS not in names:
        raise TinyExaoneError(f"{reference.repo_id}: the repository has no {WEIGHTS} (nor {INDEX}); tinyexaone "
                              f"reads safetensors weights only")
    return [name for name in (*RUN_FILES, INDEX if INDEX in names else WEIGHTS) if name in names]


def download(reference: HubReference) -> HubModel:
    """Ask the Hub for `reference` and download what running it needs (module doc)."""
    from huggingface_hub import HfApi, hf_hub_download

    if offline():
        raise TinyExaoneError(f"{reference}: not complete in the Hugging Face cache {hub_cache_dir()}, and "
                              f"HF_HUB_OFFLINE is set, so nothing is downloaded: unset HF_HUB_OFFLINE and run "
                              f"`tinyexaone pull {reference}`")
    where = endpoint()
    try:
        info = HfApi(endpoint=where).model_info(reference.repo_id, revision=reference.revision)
    except Exception as exc:  # huggingface_hub's and its HTTP client's errors: one line each
        raise _hub_error(exc, reference, "listing the repository") from None
    names = {sibling.rfilename for sibling in info.siblings or []}
    files = _files_to_fetch(names, reference)
    cache = hub_cache_dir()
    print(f"downloading {reference.repo_id} (commit {info.sha[:12]}) from {where} into {cache}", file=sys.stderr)

    def fetch(name: str, revision: str) -> Path:
        try:
            return Path(hf_hub_download(reference.repo_id, name, revision=revision, cache_dir=cache, endpoint=where))
        except Exception as exc:  # as above
            raise _hub_error(exc, reference, f"downloading {name}") from None

    # the first file by the revision's name, so the cache's refs/<revision> names the commit
    first = fetch(files[0], reference.revision or "main")
    snapshot = first.parent if files[0] == first.name else Path(str(first)[:-len(files[0])])
    if snapshot.name != info.sha:
        raise TinyExaoneError(f"{reference.repo_id}: the revision moved on {where} while downloading; run again")
    for name in files[1:]:
        fetch(name, info.sha)
    if INDEX in files:
        for shard in _missing_weights(snapshot):
            fetch(shard, info.sha)
    found = _complete(snapshot, reference.tag, reference.repo_id)
    if found is None:
        raise TinyExaoneError(f"{reference.repo_id}: the download left an incomplete model in {snapshot}")
    return HubModel(found, reference, info.sha, True)


def resolve(reference: HubReference) -> HubModel:
    """The cached model of `reference`, downloaded first when the cache lacks it (module doc)."""
    cached = _cached(reference)
    if cached is not None:
        return HubModel(cached[0], reference, cached[1], False)
    return download(reference)


def pull(reference: HubReference) -> HubModel:
    """Bring the cache up to date with the Hub for `reference` (only missing files are fetched);
    offline, the cached model if it is complete."""
    if offline():
        return resolve(reference)
    return download(reference)
