"""`generate --json-schema FILE`, `generate --grammar FILE` and `chat --json-schema FILE`, on the
shipped demo model: the output follows the schema or grammar, and a bad file, schema or grammar
is one `error:` line with exit code 2 before anything is generated."""

import json
import re

import jsonschema
import numba
import pytest

from cli_models import cli, one_thread, shipped_model

SCHEMA = {"type": "object", "properties": {"answer": {"type": "integer", "minimum": 0, "maximum": 99},
                                           "unit": {"enum": ["apples", "pears"]}},
          "required": ["answer", "unit"], "additionalProperties": False}


@pytest.fixture
def run_here(capsys):
    from tinyexaone.cli.main import main

    def run_main(*args):
        threads = numba.get_num_threads()
        try:
            with pytest.raises(SystemExit) as exit_info:
                main(one_thread([str(a) for a in args]))
        finally:
            numba.set_num_threads(threads)
        captured = capsys.readouterr()
        return exit_info.value.code, captured.out, captured.err
    return run_main


@pytest.fixture
def files(tmp_path):
    (tmp_path / "schema.json").write_text(json.dumps(SCHEMA))
    (tmp_path / "number.lark").write_text('start: /[0-9]{1,2}/ " " ("apples" | "pears")\n')
    (tmp_path / "bad.json").write_text('{"type": "strin"}')
    (tmp_path / "broken.json").write_text('{"type": ')
    (tmp_path / "bad.lark").write_text("start: missing_rule\n")
    return tmp_path


def test_generate_json_schema_through_the_template_and_raw(run_here, files):
    for extra in ([], ["--raw"]):
        code, out, err = run_here("generate", "-m", shipped_model(), "--prompt", "What is 2 + 3?", "--temperature",
                                  "0", "--max-tokens", "40", "--json-schema", files / "schema.json", "--json", *extra)
        assert code == 0, err
        result = json.loads(out)
        assert result["finish_reason"] == "stop"
        jsonschema.validate(json.loads(result["content"]), SCHEMA)


def test_generate_grammar_file(run_here, files):
    code, out, err = run_here("generate", "-m", shipped_model(), "--prompt", "I have", "--raw", "--temperature", "0",
                              "--grammar", files / "number.lark")
    assert code == 0, err
    assert re.fullmatch(r"[0-9]{1,2} (apples|pears)\n", out)


def test_piped_chat_answers_every_line_in_the_schema(files):
    result = cli("chat", "-m", shipped_model(), "--temperature", "0", "--max-tokens", "40", "--json-schema",
                 files / "schema.json", cwd=files, input=b"What is 2 + 3?\nHello!\n")
    assert result.returncode == 0, result.stderr.decode()
    replies = result.stdout.decode().splitlines()
    assert len(replies) == 2
    for reply in replies:
        jsonschema.validate(json.loads(reply), SCHEMA)


@pytest.mark.parametrize("args, message", [
    (["--json-schema", "bad.json"], "error: invalid response_format schema 'bad': Invalid type: strin"),
    (["--json-schema", "broken.json"], "error: --json-schema"),
    (["--json-schema", "missing.json"], "cannot read"),
    (["--grammar", "bad.lark"], 'unknown name: "missing_rule"'),
    (["--grammar", "bad.lark", "--json-schema", "schema.json"], "not both"),
])
def test_bad_files_are_one_line_with_exit_code_2(run_here, files, args, message):
    args = [files / a if a.endswith((".json", ".lark")) else a for a in args]
    code, out, err = run_here("generate", "-m", shipped_model(), "--prompt", "hi", *args)
    assert code == 2 and out == "" and message in err and len(err.strip().splitlines()) == 1, err
