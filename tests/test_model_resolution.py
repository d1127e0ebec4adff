"""`--model M` resolution: compact files, model directories, repo ids in a fake Hugging Face
cache (HF_HUB_CACHE / HF_HOME layouts, refs/main, symlinked blobs), and the shipped default."""

import os
from importlib import resources
from pathlib import Path

import pytest

from cli_models import build_tiny_chat_model, shipped_model
from tinyexaone import TinyExaoneError
from tinyexaone.cli import model_resolution
from tinyexaone.cli.model_resolution import default_model_path, load_model, resolve_model

REPO = "LGAI-EXAONE/tiny-test"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return build_tiny_chat_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    for name in ("HF_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return monkeypatch


def fake_cache(hub: Path, source: Path, revisions: list[str], main: str | None) -> Path:
    """A hub cache holding `source` under each revision, files as symlinks into blobs/ like huggingface_hub."""
    repo = hub / ("models--" + REPO.replace("/", "--"))
    (repo / "blobs").mkdir(parents=True)
    for revision in revisions:
        snapshot = repo / "snapshots" / revision
        snapshot.mkdir(parents=True)
        for file in source.iterdir():
            blob = repo / "blobs" / f"{revision}-{file.name}"
            blob.write_bytes(file.read_bytes())
            (snapshot / file.name).symlink_to(os.path.relpath(blob, snapshot))
    if main is not None:
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(main)
    return repo


def test_repo_id_in_hf_hub_cache_resolves_and_loads(tiny_dir, clean_env, tmp_path):
    hub = tmp_path / "hub"
    repo = fake_cache(hub, tiny_dir, ["aaa111", "bbb222"], main="aaa111")
    os.utime(repo / "snapshots" / "bbb222", (2e9, 2e9))  # newer, but refs/main wins
    clean_env.setenv("HF_HUB_CACHE", str(hub))
    resolved = resolve_model(REPO)
    assert resolved.path == repo / "snapshots" / "aaa111" and not resolved.shipped
    model, _ = load_model(REPO)
    result = model.generate("Hello", max_new_tokens=3, temperature=0)
    assert len(result.tokens) == 3


def test_hf_home_layout_and_newest_snapshot_without_refs(tiny_dir, clean_env, tmp_path):
    repo = fake_cache(tmp_path / "hf" / "hub", tiny_dir, ["old", "new"], main=None)
    os.utime(repo / "snapshots" / "old", (1e9, 1e9))
    os.utime(repo / "snapshots" / "new", (2e9, 2e9))
    clean_env.setenv("HF_HOME", str(tmp_path / "hf"))
    assert resolve_model(REPO).path == repo / "snapshots" / "new"
    # refs/main naming a snapshot that is missing falls back to the newest complete one
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("gone\n")
    assert resolve_model(REPO).path == repo / "snapshots" / "new"


def test_default_cache_location_is_under_home(tiny_dir, clean_env, tmp_path):
    fake_cache(tmp_path / "home" / ".cache" / "huggingface" / "hub", tiny_dir, ["r1"], main="r1")
    assert resolve_model(REPO).path.name == "r1"


def test_repo_errors_name_the_cache_when_offline(clean_env, tmp_path):
    """Offline, a repo id not (completely) in the cache is one line naming the cache; downloading
    is tested against a fake Hub in test_hub.py."""
    clean_env.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    clean_env.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(TinyExaoneError, match=r"not complete in the Hugging Face cache .*hub, and HF_HUB_OFFLINE"):
        resolve_model(REPO)
    (tmp_path / "hub" / "models--LGAI-EXAONE--tiny-test" / "snapshots" / "x").mkdir(parents=True)
    with pytest.raises(TinyExaoneError, match=r"not complete in the Hugging Face cache .*tinyexaone pull"):
        resolve_model(REPO)


def test_paths(tiny_dir, tmp_path, clean_env):
    assert resolve_model(str(tiny_dir)).kind == "Hugging Face directory"
    text_file = tmp_path / "notes.txt"
    text_file.write_text("hello")
    with pytest.raises(TinyExaoneError, match="not a model"):
        load_model(str(text_file))
    (tmp_path / "empty").mkdir()
    with pytest.raises(TinyExaoneError, match="no config.json"):
        resolve_model(str(tmp_path / "empty"))
    with pytest.raises(TinyExaoneError, match="no such file or directory"):
        resolve_model(str(tmp_path / "missing" / "model.bin"))
    with pytest.raises(TinyExaoneError, match="no such file or directory"):
        resolve_model("./not/here")  # a relative path is never taken for a repo id


def test_compact_file_resolves_and_loads(tiny_dir, tmp_path, clean_env):
    from tinyexaone.quant.convert import convert

    out = tmp_path / "tiny.tinyexaone"
    convert(tiny_dir, out, bits=8, group_size=32, embedding_bits=8)
    resolved = resolve_model(str(out))
    assert resolved.kind == "compact file"
    model, _ = load_model(str(out))
    assert model.tokenizer is not None and len(model.generate("Hi", max_new_tokens=2).tokens) == 2


def test_model_without_tokenizer_is_refused(tiny_dir, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        (bare / name).write_bytes((tiny_dir / name).read_bytes())
    with pytest.raises(TinyExaoneError, match="no tokenizer"):
        load_model(str(bare))


def test_chat_needs_a_chat_template_but_raw_text_does_not(tiny_dir, tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    for file in tiny_dir.iterdir():
        if file.name != "chat_template.jinja":
            (plain / file.name).write_bytes(file.read_bytes())
    with pytest.raises(TinyExaoneError, match="no chat template.*generate --raw"):
        load_model(str(plain))
    assert load_model(str(plain), chat_template=False)[0].tokenizer is not None


def test_default_model_prefers_package_data_then_checkout(tmp_path, monkeypatch):
    import tinyexaone

    if shipped_model() is not None:  # installed as package data, or found in the checkout
        assert (default_model_path() / "config.json").is_file()
    # an installed package carrying the model as package data comes first
    package = tmp_path / "site" / "tinyexaone" / "models"
    (package / "exaone4-demo").mkdir(parents=True)
    (package / "exaone4-demo" / "config.json").write_text("{}")
    monkeypatch.setattr(resources, "files", lambda name: package if name == "tinyexaone.models" else None)
    assert default_model_path() == package / "exaone4-demo"

    # without the models package, the checkout next to the imported tinyexaone package is used
    def no_models_package(name):
        raise ModuleNotFoundError(name)

    monkeypatch.setattr(resources, "files", no_models_package)
    checkout = Path(tinyexaone.__file__).resolve().parent.parent / "models" / "exaone4-demo"
    assert default_model_path() == (checkout if (checkout / "config.json").is_file() else None)


def test_no_default_model_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(model_resolution, "default_model_path", lambda: None)
    with pytest.raises(TinyExaoneError, match="no --model given and the shipped demo model"):
        resolve_model(None)


def test_default_resolves_to_the_shipped_model_when_present(monkeypatch, tiny_dir):
    monkeypatch.setattr(model_resolution, "default_model_path", lambda: tiny_dir)
    resolved = resolve_model(None)
    assert resolved.shipped and resolved.path == tiny_dir and resolved.label == "exaone4-demo"
