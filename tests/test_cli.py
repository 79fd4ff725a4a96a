"""The console script: lazy imports keep --help instant; commands wrap typed functions."""

import subprocess
import sys

from typer.testing import CliRunner

from aligners.cli import app

runner = CliRunner()


def test_help_lists_commands_without_importing_heavy_modules():
    code = (
        "import sys; from aligners.cli import app; "
        "heavy = [m for m in ('torch', 'transformers', 'peft', 'sentence_transformers') if m in sys.modules]; "
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    result = subprocess.run([sys.executable, "-m", "aligners.cli", "--help"], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0
    for command in ("models", "generate", "demo"):
        assert command in result.stdout


def test_models_lists_offline_names():
    result = runner.invoke(app, ["models"])
    assert result.exit_code == 0
    assert "smollm2-135m-instruct" in result.stdout and "minilm-l6" in result.stdout


def test_generate_with_tiny_model(tiny_lm):
    result = runner.invoke(app, ["generate", "hello", "bye", "--model", "tiny-random-llama", "--max-tokens", "3"])
    assert result.exit_code == 0, result.output
    assert "> hello" in result.stdout and "> bye" in result.stdout


def test_unknown_model_exits_2_with_a_clear_message():
    result = subprocess.run(
        [sys.executable, "-m", "aligners.cli", "generate", "hi", "--model", "nobody/nothing"],
        capture_output=True, text=True, check=False,
    )
    assert result.returncode == 2
    assert "not an offline model" in result.stderr and "Traceback" not in result.stderr
