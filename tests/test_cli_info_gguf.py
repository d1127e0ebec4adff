"""`tinyexaone info` on GGUF files written from the demo model (Q8_0 and Q4_0 matrices):
config from the metadata, tensor types, what loads exactly, tokenizer and template present."""

from pathlib import Path

import pytest
from click.testing import CliRunner
from gguf import GGMLQuantizationType as TYPE

from gguf_models import gguf_from_hf
from tinyexaone.cli.main import cli, main

DEMO = Path(__file__).resolve().parents[1] / "models" / "exaone4-demo"


@pytest.mark.parametrize("kind", [TYPE.Q8_0, TYPE.Q4_0])
def test_info_describes_a_gguf(tmp_path, kind):
    path = gguf_from_hf(DEMO, tmp_path / f"demo-{kind.name}.gguf", kind)
    result = CliRunner().invoke(cli, ["info", str(path), "--verify"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "(GGUF, architecture exaone4)" in out and "4 layers, hidden 192, MLP 576" in out
    assert f"{kind.name} as int8/int4 g32 bit for bit" in out and "F32" in out
    assert "tokenizer   embedded, chat template embedded" in out
    assert "verified    nothing" in out


def test_info_on_a_broken_gguf_is_one_line(tmp_path, capsys):
    path = tmp_path / "bad.gguf"
    path.write_bytes(b"GGUF" + bytes(20))
    with pytest.raises(SystemExit) as exit_info:
        main(["info", str(path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
