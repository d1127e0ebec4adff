"""`tinyexaone generate`: deterministic greedy output, --json, --raw, and one-line errors (exit 2).

Runs the installed command in a subprocess from outside the checkout, on the shipped demo model
when it is present (else on a tiny random model with the real EXAONE tokenizer).
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numba
import pytest

import tinyexaone
from tinyexaone import load_tokenizer

from cli_models import build_tiny_chat_model, cli, cli_env, one_thread, reset_sigint, shipped_model

PROMPT = "What is 12 + 7?"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return shipped_model() or build_tiny_chat_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture
def run(tmp_path):
    def run_cli(*args, input=None, env=None):
        result = cli(*args, cwd=tmp_path, input=input, env=env)
        return result.returncode, result.stdout.decode("utf-8"), result.stderr.decode("utf-8")
    return run_cli


@pytest.fixture
def run_here(capsys):
    """Run `tinyexaone ARGS` in this process (faster); returns (exit code, stdout, stderr)."""
    from tinyexaone.cli.main import main

    def run_main(*args):
        threads = numba.get_num_threads()
        try:
            with pytest.raises(SystemExit) as exit_info:
                main(one_thread(args))
        finally:
            numba.set_num_threads(threads)  # --threads must not leak into the other tests of this process
        captured = capsys.readouterr()
        return exit_info.value.code, captured.out, captured.err
    return run_main


@pytest.fixture(scope="module")
def greedy_output(model_dir, tmp_path_factory):
    """stdout of two separate greedy runs of the installed command."""
    cwd = tmp_path_factory.mktemp("greedy")
    results = [cli("generate", "--model", model_dir, "--prompt", PROMPT, "--temperature", "0", "--max-tokens", "24",
                   cwd=cwd) for _ in range(2)]
    for result in results:
        assert result.returncode == 0, result.stderr
        err = result.stderr.decode()
        assert "prompt" in err and "tok/s" in err and "first token" in err  # the stats line
    return [result.stdout.decode("utf-8") for result in results]


def test_greedy_output_is_the_same_on_every_run(greedy_output, run_here, model_dir):
    assert greedy_output[0] == greedy_output[1] and greedy_output[0].strip()
    # the same greedy run as JSON carries the same text, the documented keys and the stats
    code, out, err = run_here("generate", "-m", model_dir, "-p", PROMPT, "--temp", "0", "-n", "24", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert set(data) == {"content", "reasoning_content", "tool_calls", "finish_reason", "stats"}
    assert data["content"] == greedy_output[0].rstrip("\n")
    assert data["stats"]["prompt_tokens"] > 0 and data["stats"]["generated_tokens"] <= 24
    assert data["finish_reason"] in ("stop", "length")
    # a compact file read into memory (the default) and memory-mapped (--mmap) give the same reply
    compact = Path(__file__).resolve().parents[1] / "models" / "exaone4-demo" / "exaone4-demo-int8.tx"
    replies = [run_here("generate", "-m", str(compact), "-p", PROMPT, "--temp", "0", "-n", "12", *flag)
               for flag in ((), ("--mmap",))]
    assert replies[0][0] == 0 and replies[0][1].strip() and replies[0][1] == replies[1][1], replies


def test_seeded_sampling_repeats_and_raw_mode(run_here, model_dir):
    first, second = (json.loads(run_here("generate", "-m", model_dir, "-p", PROMPT, "--seed", "7", "--temperature",
                                         "1.0", "-n", "12", "--json")[1]) for _ in range(2))
    assert first["content"] == second["content"]
    code, out, err = run_here("generate", "-m", model_dir, "-p", "12 + 7 =", "--raw", "--temperature", "0", "-n", "6",
                              "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["reasoning_content"] is None
    assert data["stats"]["prompt_tokens"] == len(load_tokenizer(model_dir).encode("12 + 7 ="))  # no template


def test_prompt_from_stdin_and_invalid_utf8(run, model_dir):
    code, out, err = run("generate", "-m", model_dir, "--prompt", "-", "--temperature", "0", "-n", "4", "--json",
                         input=b"What is 1 + 1?\xff\n")
    assert code == 0, err
    assert json.loads(out)["stats"]["prompt_tokens"] > 0


def test_context_limits_are_explained(run_here, model_dir):
    code, out, err = run_here("generate", "-m", model_dir, "-p", PROMPT * 20, "--ctx-size", "16", "-n", "4")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "does not fit the context" in err and "--ctx-size" in err and "Traceback" not in err
    # a reply that runs into the end of the context stops there and says so
    prompt_tokens = len(load_tokenizer(model_dir).apply_chat_template([{"role": "user", "content": PROMPT}],
                                                                      tokenize=True))
    code, out, err = run_here("generate", "-m", model_dir, "-p", PROMPT, "--ctx-size", prompt_tokens + 2,
                              "--temperature", "0", "-n", "500")
    assert code == 0 and "the context is full; use a larger --ctx-size" in err
    code, out, err = run_here("generate", "-m", model_dir, "-p", PROMPT, "--ctx-size", prompt_tokens + 2,
                              "--temperature", "0", "-n", "500", "--json")
    data = json.loads(out)
    assert data["finish_reason"] == "length" and data["stats"]["context_full"]
    assert data["stats"]["generated_tokens"] <= 3  # two fit; the third is sampled but has no room to be fed


def error_line(code, err):
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


def test_errors_are_one_line_with_exit_code_2(run, model_dir, tmp_path):
    (tmp_path / "notes.txt").write_text("not a model\n")
    cases = [
        (["--model", tmp_path / "missing-model"], "no such file or directory"),
        (["--model", tmp_path / "notes.txt"], "not a model"),
        (["--model", model_dir, "--temperature", "-1"], "invalid value for --temperature: '-1' (must be 0 or >= 1e-06)"),
    ]
    for args, message in cases:
        assert message in error_line(*run("generate", *args, "--prompt", "hi")[::2])


@pytest.mark.parametrize("args,message", [
    (["--model", "{tmp}"], "no config.json"),
    (["--top-p", "0"], "invalid value for --top-p: '0' (must be in (0, 1])"),
    (["--max-tokens", "many"], "invalid value for --max-tokens: 'many' is not an integer"),
    (["--ctx-size", "99999999"], "invalid value for --ctx-size: 99999999 (this model handles at most"),
    (["--threads", "0"], "invalid value for --threads"),
    (["--seed", "1.5"], "invalid value for --seed"),
    (["--min-p", "nan"], "'nan' (must be a finite number in [0, 1])"),
    (["--raw", "--think"], "need the chat template"),
    (["--prompt", "  "], "the prompt is empty"),
])
def test_more_errors_in_process(run_here, model_dir, tmp_path, args, message):
    args = [str(a).format(tmp=tmp_path) for a in args]
    if "--model" not in args:
        args = ["--model", str(model_dir), *args]
    assert message in error_line(*run_here("generate", "--prompt", "hi", *args)[::2])


def test_missing_prompt_is_one_line(run_here, model_dir):
    assert "needs --prompt" in error_line(*run_here("generate", "--model", model_dir)[::2])


def test_repo_id_in_a_fake_hf_cache(run, run_here, greedy_output, model_dir, tmp_path, monkeypatch):
    hub = tmp_path / "hub"
    snapshot = hub / "models--someorg--tiny-chat" / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    for file in model_dir.iterdir():
        if file.is_file() and file.suffix != ".py":
            (snapshot / file.name).symlink_to(file)
    (hub / "models--someorg--tiny-chat" / "refs").mkdir()
    (hub / "models--someorg--tiny-chat" / "refs" / "main").write_text("0123abcd")
    env = cli_env(tmp_path)
    env["HF_HUB_CACHE"] = str(hub)
    code, out, err = run("generate", "--model", "someorg/tiny-chat", "-p", PROMPT, "--temperature", "0", "-n", "24",
                         env=env)
    assert code == 0, err
    assert out == greedy_output[0]  # the same model as by its path
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a repo id not in the cache is downloaded otherwise (test_hub.py)
    code, out, err = run_here("generate", "--model", "someorg/other", "-p", "hi")
    assert "not complete in the Hugging Face cache" in error_line(code, err)


def test_generate_without_model_uses_the_shipped_model(run, greedy_output):
    if shipped_model() is None:
        code, _, err = run("generate", "-p", "hi")
        assert "no --model given and the shipped demo model" in error_line(code, err)
    else:
        code, out, err = run("generate", "-p", PROMPT, "--temperature", "0", "-n", "24")
        assert code == 0, err
        assert out == greedy_output[0]


def test_think_system_and_reasoning_budget_flags(run_here, model_dir):
    def generate_json(*args):
        code, out, err = run_here("generate", "--model", model_dir, "-p", PROMPT, "--temperature", "0", "-n", "12",
                                  "--json", *args)
        assert code == 0, err
        return json.loads(out)

    plain = generate_json()
    with_system = generate_json("--system", "You are a helpful assistant.")
    assert with_system["stats"]["prompt_tokens"] > plain["stats"]["prompt_tokens"]
    thinking = generate_json("--think")
    assert thinking["stats"]["prompt_tokens"] < plain["stats"]["prompt_tokens"]  # "<think>\n" only: still open
    budget = generate_json("--think", "--reasoning-budget", "0")
    assert not budget["reasoning_content"]  # the reasoning was closed before it began
    if shipped_model() is None:  # the random model never closes its reasoning by itself
        assert thinking["reasoning_content"] and not thinking["content"]


def test_invalid_utf8_in_prompt_and_system_flags(run_here, model_dir):
    """Bytes that are not UTF-8 reach Python as lone surrogates; the CLI replaces them (warning)."""
    broken = b"What is 1 + 1?\xff".decode("utf-8", "surrogateescape")
    code, out, err = run_here("generate", "-m", model_dir, "--prompt", broken, "--system", broken,
                              "--temperature", "0", "-n", "4", "--json")
    assert code == 0, err
    assert "--prompt is not valid UTF-8" in err and "--system is not valid UTF-8" in err
    assert json.loads(out)["stats"]["prompt_tokens"] > 0


def test_lone_surrogates_through_the_api_are_one_error(model_dir):
    model = tinyexaone.load(model_dir)
    with pytest.raises(tinyexaone.TinyExaoneError, match="not valid Unicode"):
        model.generate("a\udcff b", max_new_tokens=2)
    with pytest.raises(tinyexaone.TinyExaoneError, match="not valid Unicode"):
        model.chat([{"role": "user", "content": "a\ud800"}], max_new_tokens=2)


@pytest.mark.parametrize("stdout", ["full", "closed"])
def test_output_that_cannot_be_written_is_one_line_and_exit_1(model_dir, tmp_path, stdout):
    args = [sys.executable, "-m", "tinyexaone", *one_thread(["generate", "-m", model_dir, "--prompt", "hi", "-n", "3",
                                                             "--temperature", "0"])]
    if stdout == "full":
        with open("/dev/full", "w") as full:
            done = subprocess.run(args, stdout=full, stderr=subprocess.PIPE, cwd=tmp_path, env=cli_env(tmp_path),
                                  timeout=120)
    else:
        done = subprocess.run(args, stderr=subprocess.PIPE, cwd=tmp_path, env=cli_env(tmp_path), timeout=120,
                              preexec_fn=lambda: os.close(1))
    err = done.stderr.decode()
    assert done.returncode == 1 and "Traceback" not in err and "Exception ignored" not in err
    assert err.strip().splitlines()[-1] in ("error: cannot write the output (No space left on device)",
                                            "error: standard output is closed")


def test_ctrl_c_while_starting_up_is_never_a_traceback(model_dir, tmp_path):
    """SIGINT at moments spread over the start (imports, loading the model, compiling, the first
    token): "interrupted" and 130, and no report of objects the interrupt left half-built."""
    args = [sys.executable, "-m", "tinyexaone", *one_thread(["generate", "-m", model_dir, "--prompt", "hi", "-n", "200",
                                                             "--temperature", "0"])]
    cold = dict(cli_env(tmp_path), NUMBA_CACHE_DIR=str(tmp_path / "numba"))  # interrupts land in compiling too
    for delay in [0.05 + 0.1 * i for i in range(12)]:
        process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=tmp_path,
                                   env=cold if delay > 0.6 else cli_env(tmp_path), preexec_fn=reset_sigint)
        time.sleep(delay)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
        assert b"Traceback" not in err, (delay, err.decode())
        assert process.returncode in (130, -signal.SIGINT, 0), (delay, process.returncode)  # 0: it had finished


def test_only_a_real_context_overflow_gets_the_ctx_size_hint(run_here, tmp_path):
    model = build_tiny_chat_model(tmp_path / "m")
    (model / "chat_template.jinja").write_text("{{ raise_exception('the context of this message is wrong') }}")
    code, _, err = run_here("generate", "-m", model, "--prompt", "hi")
    assert code == 2 and "the context of this message is wrong" in err and "--ctx-size" not in err


def test_ctrl_c_in_a_piped_chat_ends_it_with_130(model_dir, tmp_path):
    slow_cli = Path(__file__).resolve().parent / "slow_cli.py"
    process = subprocess.Popen([sys.executable, str(slow_cli), "0.2", *one_thread(["chat", "-m", model_dir, "-n", "50"])],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path,
                               env=cli_env(tmp_path), preexec_fn=reset_sigint)
    process.stdin.write(b"first message\nsecond message\n")
    process.stdin.flush()
    time.sleep(2.0)  # inside the first reply (every forward pass takes 0.2 s)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err.decode()
    assert b"Traceback" not in err and b"interrupted" in err
