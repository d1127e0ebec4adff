"""Hugging Face Hub repo ids against a fake Hub on 127.0.0.1 (tests/fake_hub.py, via HF_ENDPOINT):
the download and its progress output, only the files running needs, the cache reused with no
request at all, `pull --quantize`, an interrupted download resuming with a Range request, revisions,
GGUF repositories and their tags, a sharded checkpoint, HF_TOKEN, and one-line errors for a
nonexistent repo or revision, no network and HF_HUB_OFFLINE."""

import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from cli_models import build_tiny_chat_model, cli, cli_env, shipped_model
from fake_hub import FakeHub
from gguf_models import TYPE, gguf_from_hf
from tinyexaone import hub
from tinyexaone.errors import TinyExaoneError

REPO = "LGAI-EXAONE/tiny-demo"
NOT_NEEDED = {"README.md": b"# model card", "pytorch_model.bin": b"x" * 1000, "onnx/model.onnx": b"y" * 1000}


@pytest.fixture(scope="module")
def model_files():
    demo = shipped_model()
    if demo is None:
        pytest.skip("the demo model is not in this checkout")
    return {p.name: p.read_bytes() for p in demo.iterdir() if p.suffix in (".json", ".safetensors", ".jinja")}


@pytest.fixture
def fake_hub():
    with FakeHub() as server:
        yield server


@pytest.fixture
def env(tmp_path, fake_hub):
    """The environment of a CLI run against the fake Hub, with an empty cache under HF_HOME."""
    values = cli_env(tmp_path)
    for name in ("HF_HUB_CACHE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN", "HF_HUB_DISABLE_PROGRESS_BARS"):
        values.pop(name, None)
    values.update(HF_ENDPOINT=fake_hub.url, HF_HOME=str(tmp_path / "hf"))
    return values


@pytest.fixture
def in_process(monkeypatch, tmp_path, fake_hub):
    """The same environment for calls in this process (hub.py reads it when called)."""
    for name in ("HF_HUB_CACHE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", fake_hub.url)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    return monkeypatch


def file_requests(fake_hub) -> list[str]:
    return [path for method, path, _ in fake_hub.requests if "/resolve/" in path or path.startswith("/api/models")]


def test_download_only_what_runs_with_progress_then_reuse_the_cache(fake_hub, env, tmp_path, model_files):
    import pexpect

    commit = fake_hub.add_repo(REPO, {**model_files, **NOT_NEEDED})
    # in a terminal, so that huggingface_hub's progress bars show (tqdm hides them from pipes)
    output, status = pexpect.run(f"{sys.executable} -m tinyexaone pull {REPO}", cwd=str(tmp_path), env=env,
                                 withexitstatus=True, timeout=120)
    output = output.decode()
    assert status == 0, output
    assert f"downloading {REPO} (commit {commit[:12]}) from {fake_hub.url}" in output
    assert "model.safetensors: 100%" in output and "tokenizer.json: 100%" in output  # the progress bars
    fetched = {path.rsplit("/resolve/", 1)[1].split("/", 1)[1] for method, path, _ in fake_hub.requests
               if method == "GET" and "/resolve/" in path}
    assert fetched == set(model_files)
    snapshot = tmp_path / "hf" / "hub" / "models--LGAI-EXAONE--tiny-demo" / "snapshots" / commit
    assert {p.name for p in snapshot.iterdir()} == set(model_files)
    assert (snapshot.parent.parent / "refs" / "main").read_text() == commit
    before = len(fake_hub.requests)
    done = cli("generate", "--model", REPO, "--prompt", "Hello", "--max-tokens", "3", cwd=tmp_path, env=env)
    assert done.returncode == 0 and "downloading" not in done.stderr.decode(), done.stderr.decode()
    assert fake_hub.requests[before:] == []  # the cache is complete: no request at all
    shipped = cli("generate", "--model", shipped_model(), "--prompt", "Hello", "--max-tokens", "3", cwd=tmp_path)
    assert done.stdout == shipped.stdout  # the same model as the demo directory


def test_pull_with_quantize_writes_the_compact_file_next_to_the_cache(fake_hub, env, tmp_path, model_files):
    commit = fake_hub.add_repo(REPO, model_files)
    done = cli("pull", REPO, "--quantize", "8", cwd=tmp_path, env=env)
    out = done.stdout.decode()
    assert done.returncode == 0, done.stderr.decode()
    compact = tmp_path / "hf" / "hub" / "models--LGAI-EXAONE--tiny-demo" / "tinyexaone" / f"{commit}-int8.tx"
    assert f"compact     {compact} (" in out and compact.is_file()
    assert f"run it      tinyexaone chat --model {compact}" in out
    again = cli("pull", REPO, "--quantize", "8", cwd=tmp_path, env=env)
    assert again.returncode == 0 and "(already written)" in again.stdout.decode()
    run = cli("generate", "--model", compact, "--prompt", "Hi", "--max-tokens", "2", cwd=tmp_path, env=env)
    assert run.returncode == 0, run.stderr.decode()


def test_an_interrupted_download_resumes(fake_hub, env, tmp_path, model_files):
    """The connection drops 15 MB into a 24 MB file: huggingface_hub continues it with a Range
    request from what it has written (whole 10 MB chunks), and the file is complete and intact.
    (A process killed mid-file starts that file again: huggingface_hub >= 2 keeps no partial file
    between runs; files already complete are not fetched again.)"""
    weights = np.random.default_rng(0).integers(0, 256, 24 << 20, dtype=np.uint8).tobytes()
    fake_hub.add_repo(REPO, dict(model_files, **{"model.safetensors": weights}))  # pull does not load them
    fake_hub.drop["model.safetensors"] = 15 << 20
    done = cli("pull", REPO, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr.decode()
    assert "Trying to resume download" in done.stderr.decode()
    ranges = [h.get("range") for h in fake_hub.gets("model.safetensors")]
    assert ranges == [None, f"bytes={10 << 20}-"], ranges
    path = Path(done.stdout.decode().split("model       ", 1)[1].splitlines()[0])
    assert hashlib.sha256((path / "model.safetensors").read_bytes()).digest() == hashlib.sha256(weights).digest()
    before = len(fake_hub.gets("config.json"))
    assert cli("pull", REPO, cwd=tmp_path, env=env).returncode == 0
    assert len(fake_hub.gets("config.json")) == before and len(fake_hub.gets("model.safetensors")) == 2


def test_nonexistent_repo_and_revision_are_one_line_errors(fake_hub, env, tmp_path, model_files):
    fake_hub.add_repo(REPO, model_files)
    for args, message in [(["pull", "LGAI-EXAONE/no-such-model"], "no such model repository on"),
                          (["pull", REPO, "--revision", "v9"], "no revision 'v9' on"),
                          (["generate", "--model", f"{REPO}@v9", "--prompt", "hi"], "no revision 'v9' on"),
                          (["pull", "not a repo"], "is not a Hugging Face repo id")]:
        done = cli(*args, cwd=tmp_path, env=env)
        stderr = done.stderr.decode()
        assert done.returncode == 2 and stderr.startswith("error: ") and stderr.count("\n") == 1, stderr
        assert message in stderr, stderr


def test_offline_and_no_network(fake_hub, env, tmp_path, model_files):
    fake_hub.add_repo(REPO, model_files)
    offline = dict(env, HF_HUB_OFFLINE="1")
    done = cli("generate", "--model", REPO, "--prompt", "hi", cwd=tmp_path, env=offline)
    stderr = done.stderr.decode()
    assert done.returncode == 2 and stderr.count("\n") == 1, stderr
    assert "not complete in the Hugging Face cache" in stderr and "HF_HUB_OFFLINE is set" in stderr
    assert f"tinyexaone pull {REPO}" in stderr and fake_hub.requests == []
    unreachable = dict(env, HF_ENDPOINT="http://127.0.0.1:9")
    done = cli("pull", REPO, cwd=tmp_path, env=unreachable)
    stderr = done.stderr.decode()
    assert done.returncode == 2 and stderr.count("\n") == 1 and "cannot reach http://127.0.0.1:9" in stderr, stderr
    assert cli("pull", REPO, cwd=tmp_path, env=env).returncode == 0
    before = len(fake_hub.requests)
    done = cli("generate", "--model", REPO, "--prompt", "hi", "--max-tokens", "2", cwd=tmp_path, env=offline)
    assert done.returncode == 0 and len(fake_hub.requests) == before  # offline, from the cache
    assert cli("pull", REPO, cwd=tmp_path, env=offline).returncode == 0  # pull offline: the cache is complete


def test_hf_token_is_sent(fake_hub, env, tmp_path, model_files):
    fake_hub.add_repo(REPO, model_files, private_token="hf_secret")
    done = cli("pull", REPO, cwd=tmp_path, env=env)
    assert done.returncode == 2 and b"if it is private, set HF_TOKEN" in done.stderr
    done = cli("pull", REPO, cwd=tmp_path, env=dict(env, HF_TOKEN="hf_secret"))
    assert done.returncode == 0, done.stderr.decode()
    assert all(h.get("authorization") == "Bearer hf_secret" for h in fake_hub.gets("config.json"))


def test_revisions_by_name_and_commit(fake_hub, in_process, model_files):
    old = dict(model_files, **{"generation_config.json": b'{"eos_token_id": 14, "bos_token_id": 1}'})
    first = fake_hub.add_repo(REPO, old, revisions=["v1"])
    second = fake_hub.add_repo(REPO, model_files)
    assert first != second
    assert hub.resolve(hub.parse_reference(f"{REPO}@v1")).commit == first
    assert hub.resolve(hub.parse_reference(REPO)).commit == second
    assert hub.resolve(hub.parse_reference(REPO, revision=first)).commit == first
    repo_dir = hub.repo_cache_dir(REPO)
    assert (repo_dir / "refs" / "v1").read_text() == first and (repo_dir / "refs" / "main").read_text() == second
    before = len(file_requests(fake_hub))
    assert hub.resolve(hub.parse_reference(f"{REPO}@v1")).path == repo_dir / "snapshots" / first
    assert len(file_requests(fake_hub)) == before  # from the cache
    with pytest.raises(TinyExaoneError, match="not a branch, tag or commit"):
        hub.parse_reference(REPO, revision="../../etc")


@pytest.fixture(scope="module")
def gguf_files(tmp_path_factory):
    demo = shipped_model()
    if demo is None:
        pytest.skip("the demo model is not in this checkout")
    folder = tmp_path_factory.mktemp("ggufs")
    return {kind: gguf_from_hf(demo, folder / f"tiny-{kind}.gguf", getattr(TYPE, kind)).read_bytes()
            for kind in ("Q8_0", "Q4_0")}


def test_gguf_repositories_and_their_tags(fake_hub, in_process, gguf_files):
    files = {"EXAONE-tiny-Q8_0.gguf": gguf_files["Q8_0"], "EXAONE-tiny-Q4_0.gguf": gguf_files["Q4_0"],
             "EXAONE-tiny-Q4_K_M.gguf": b"GGUF not fetched", "README.md": b"card"}
    fake_hub.add_repo("LGAI-EXAONE/tiny-GGUF", files)
    found = hub.resolve(hub.parse_reference("LGAI-EXAONE/tiny-GGUF"))
    assert found.path.name == "EXAONE-tiny-Q8_0.gguf"  # loads exactly as int8: preferred
    assert [p for p in file_requests(fake_hub) if "/resolve/" in p] == \
        [f"/LGAI-EXAONE/tiny-GGUF/resolve/main/EXAONE-tiny-Q8_0.gguf"] * 2  # HEAD and GET
    import tinyexaone

    model = tinyexaone.load("LGAI-EXAONE/tiny-GGUF:q4_0")  # the API takes references too; tags ignore case
    assert model.tokenizer.encode("hello") and model.forward([1, 2], model.new_cache()).shape == (2, 1422)
    with pytest.raises(TinyExaoneError, match=r"no GGUF file for tag 'Q5_K_M' \(this repository has: Q4_0, Q4_K_M, Q8_0\)"):
        hub.resolve(hub.parse_reference("LGAI-EXAONE/tiny-GGUF:Q5_K_M"))
    fake_hub.add_repo("LGAI-EXAONE/split-GGUF", {"m-Q8_0-00001-of-00002.gguf": b"a", "m-Q8_0-00002-of-00002.gguf": b"b"})
    with pytest.raises(TinyExaoneError, match="split GGUF"):
        hub.resolve(hub.parse_reference("LGAI-EXAONE/split-GGUF"))
    fake_hub.add_repo("LGAI-EXAONE/empty", {"README.md": b"card"})
    with pytest.raises(TinyExaoneError, match="neither a config.json nor GGUF files"):
        hub.resolve(hub.parse_reference("LGAI-EXAONE/empty"))


def test_a_sharded_checkpoint_fetches_the_shards_its_index_lists(fake_hub, in_process, tmp_path):
    directory = build_tiny_chat_model(tmp_path / "tiny")
    tensors = load_file(str(directory / "model.safetensors"))
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    files = {p.name: p.read_bytes() for p in directory.iterdir() if p.name != "model.safetensors"}
    for shard, members in shards.items():
        save_file({n: tensors[n] for n in members}, str(tmp_path / shard), metadata={"format": "pt"})
        files[shard] = (tmp_path / shard).read_bytes()
    index = {"metadata": {}, "weight_map": {n: shard for shard, members in shards.items() for n in members}}
    files["model.safetensors.index.json"] = json.dumps(index).encode()
    files["model-00003-of-00003.safetensors"] = b"an old shard the index does not list"
    fake_hub.add_repo(REPO, files)
    found = hub.resolve(hub.parse_reference(REPO))
    assert {p.name for p in found.path.iterdir()} == set(files) - {"model-00003-of-00003.safetensors"}
    import tinyexaone

    model = tinyexaone.load(REPO)
    assert model.forward([1, 2, 3], model.new_cache()).shape[0] == 3
