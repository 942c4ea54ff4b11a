"""CLI input refused with one `rungflow: error:` line naming the field, exit code 2, no
traceback: --backend values that are not mappings, Python tags, duplicated keys, spec files
that are not UTF-8 or are directories."""

from __future__ import annotations

import pytest
import yaml

from tuning.cli import main as cli

SPEC = {"name": "inp", "trainable": "tests.trainables:SIM", "metric": "accuracy",
        "space": {"lr": {"type": "uniform", "low": 0.001, "high": 0.1}},
        "backend": {"type": "simulated"}}


@pytest.fixture
def spec_file(tmp_path):
    f = tmp_path / "exp.yaml"
    f.write_text(yaml.safe_dump({**SPEC, "storage_path": str(tmp_path / "runs")}))
    return f


def _one_error(capsys, rc):
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err
    assert err.startswith("rungflow: error: ") and err.count("rungflow: error:") == 1, err
    return err


def test_backend_preset_that_is_a_yaml_list(tmp_path, spec_file, capsys):
    preset = tmp_path / "preset.yaml"
    preset.write_text("- type: dask\n- address: tcp://x:1\n")
    err = _one_error(capsys, cli(["run", str(spec_file), "--quiet", "--backend", str(preset)]))
    assert "backend: Input should be a valid dictionary" in err


def test_backend_json_list(spec_file, capsys):
    err = _one_error(capsys, cli(["run", str(spec_file), "--quiet", "--backend", '[1, 2]']))
    assert "backend: Input should be a valid dictionary" in err


@pytest.mark.parametrize("where", ["inline", "file"])
def test_backend_with_a_python_tag(tmp_path, spec_file, capsys, where):
    text = "!!python/object/apply:os.system ['echo pwned']"
    arg = text
    if where == "file":
        (tmp_path / "evil.yaml").write_text(f"backend: {text}\n")
        arg = str(tmp_path / "evil.yaml")
    err = _one_error(capsys, cli(["run", str(spec_file), "--quiet", "--backend", arg]))
    assert "--backend" in err and "python/object/apply:os.system" in err
    assert "Python tags are not allowed" in err


def test_backend_that_is_a_word(spec_file, capsys):
    err = _one_error(capsys, cli(["run", str(spec_file), "--quiet", "--backend", "dask"]))
    assert "--backend: neither a preset file nor a JSON mapping: 'dask'" in err


def test_backend_preset_file_with_an_unknown_field(tmp_path, spec_file, capsys):
    preset = tmp_path / "preset.yaml"
    preset.write_text("backend: {type: dask, adress: 'tcp://x:1'}\n")
    err = _one_error(capsys, cli(["run", str(spec_file), "--quiet", "--backend", str(preset)]))
    assert "backend.adress: unknown field" in err


@pytest.mark.parametrize("text,key,line", [
    ("name: a\nmetric: accuracy\nname: b\n", "'name'", "line 3"),
    ("space:\n  lr: {type: uniform, low: 0, high: 1, low: 2}\n", "'low'", "line 2"),
])
def test_spec_with_a_duplicated_key(tmp_path, capsys, text, key, line):
    f = tmp_path / "dup.yaml"
    f.write_text(text)
    err = _one_error(capsys, cli(["run", str(f), "--quiet"]))
    assert f"duplicate key {key}" in err and line in err and str(f) in err


def test_backend_preset_with_a_duplicated_key(tmp_path, spec_file, capsys):
    preset = tmp_path / "preset.yaml"
    preset.write_text("type: dask\naddress: tcp://a:1\naddress: tcp://b:1\n")
    err = _one_error(capsys, cli(["run", str(spec_file), "--quiet", "--backend", str(preset)]))
    assert "duplicate key 'address'" in err


def test_spec_file_not_utf8(tmp_path, capsys):
    f = tmp_path / "latin1.yaml"
    f.write_bytes("name: caf\u00e9\n".encode("latin-1"))
    err = _one_error(capsys, cli(["run", str(f), "--quiet"]))
    assert "is not UTF-8 text" in err and str(f) in err and "0xe9" in err


def test_spec_file_is_a_directory(tmp_path, capsys):
    err = _one_error(capsys, cli(["run", str(tmp_path), "--quiet"]))
    assert "is a directory" in err and str(tmp_path) in err


def test_spec_file_missing(tmp_path, capsys):
    err = _one_error(capsys, cli(["run", str(tmp_path / "nope.yaml"), "--quiet"]))
    assert "not found" in err


def test_spec_with_a_plateau_typo(tmp_path, capsys):
    f = tmp_path / "exp.yaml"
    f.write_text(yaml.safe_dump({**SPEC, "stop": {"plateau": {"patience": 3}}}))
    err = _one_error(capsys, cli(["run", str(f), "--quiet"]))
    assert "stop.plateau.patience: unknown field" in err
