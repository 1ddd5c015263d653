"""The `viscope` command as a user runs it: listings, a run folder, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml

from viscope.cli import main
from viscope.invariance import InvarianceResult


def run(args, capsys):
    try:
        main(args)
        code = 0
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("kind,expect", [
    ("transforms", ["brightness", "perspective", "translation", "degrees", "identity"]),
    ("measures", ["nv", "anova", "goodfellow"]),
    ("datasets", ["shapes", "digits"]),
    ("models", ["test_vit", "fastervit_tiny"]),
    ("methods", ["gradcam", "cbrise", "rollout"]),
    ("objectives", ["ce", "cross-entropy"]),
    ("initialisers", ["default", "pca", "zca", "kmeans", "mimetic"]),
])
def test_list(kind, expect, capsys):
    code, out, _ = run(["list", kind], capsys)
    assert code == 0
    for word in expect:
        assert word in out


def test_list_layers_marks_the_default_set(capsys):
    code, out, _ = run(["list", "layers", "--model", "vit_tiny_patch16_224", "--model-arg",
                        "img_size=32", "--model-arg", "patch_size=4"], capsys)
    assert code == 0
    assert "blocks.11" in out and "65×192" in out and "✓" in out


def test_invariance_writes_a_complete_run_folder(tmp_path, capsys):
    out_dir = tmp_path / "rot"
    code, out, err = run(["invariance", "--model", "test_vit", "--model-arg", "img_size=32",
                          "--dataset", "shapes", "--transform", "rotation", "--samples", "12",
                          "--params", "4", "--layers", "blocks.*", "--measure", "nv",
                          "--no-progress", "--out", str(out_dir)], capsys)
    assert code == 0, err
    for f in ("per_layer.csv", "per_unit.npz", "config.yaml", "environment.json", "nv.png",
              "result.json"):
        assert (out_dir / f).exists(), f
    df = pd.read_csv(out_dir / "per_layer.csv")
    assert list(df.columns[:5]) == ["layer", "depth", "tv", "sv", "nv"]
    assert df["layer"].tolist() == [f"blocks.{i}" for i in range(len(df))]
    cfg = yaml.safe_load((out_dir / "config.yaml").read_text())
    assert cfg["transform"] == "rotation" and cfg["samples"] == 12
    assert json.loads((out_dir / "environment.json").read_text())["torch"]
    r = InvarianceResult.load(out_dir)
    assert r.meta["model"] == "test_vit"
    assert abs(r.average() - df["nv"].mean()) < 1e-12
    assert not (out_dir / "resume.pt").exists()  # removed once the result is complete


def test_a_random_init_model_gives_the_same_numbers_for_the_same_seed(tmp_path, capsys):
    args = ["invariance", "--model", "test_vit", "--model-arg", "img_size=32", "--samples",
            "6", "--params", "3", "--transform", "contrast", "--no-progress"]
    tables = []
    for name, seed in [("a", "1"), ("b", "1"), ("c", "2")]:
        code, _, err = run([*args, "--seed", seed, "--out", str(tmp_path / name)], capsys)
        assert code == 0, err
        tables.append(pd.read_csv(tmp_path / name / "per_layer.csv"))
    pd.testing.assert_frame_equal(tables[0], tables[1])
    assert not tables[0]["nv"].equals(tables[2]["nv"])


def test_a_stale_resume_file_is_one_line_that_says_what_to_do(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "resume.pt").write_bytes(b"truncated")
    cmd = [sys.executable, "-m", "viscope.cli", "invariance", "--model", "test_vit",
           "--model-arg", "img_size=32", "--samples", "4", "--params", "2",
           "--transform", "rotation", "--no-progress", "--out", str(tmp_path / "x")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "delete it" in lines[0], proc.stderr


@pytest.mark.parametrize("args,message", [
    (["--transform", "rotate"], "Did you mean 'rotation'"),
    (["--transform", "rotation", "--layers", "block.*"], "layer pattern"),
    (["--transform", "rotation", "--dataset", "/no/such/folder"], "no such folder"),
    (["--transform", "rotation", "--measure", "nvv"], "Unknown measure"),
])
def test_bad_arguments_give_one_line_and_exit_2(args, message, tmp_path):
    cmd = [sys.executable, "-m", "viscope.cli", "invariance", "--model", "test_vit",
           "--model-arg", "img_size=32", "--samples", "4", "--params", "2",
           "--out", str(tmp_path / "x"), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert "Traceback" not in proc.stderr


def test_ctrl_c_exits_130_and_says_where_the_work_is(tmp_path, capsys, monkeypatch):
    import viscope.invariance

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt("measurement saved to x/resume.pt; run it again to resume")

    monkeypatch.setattr(viscope.invariance, "measure", interrupted)
    code, _, err = run(["invariance", "--model", "test_vit", "--model-arg", "img_size=32",
                        "--transform", "rotation", "--no-progress", "--out",
                        str(tmp_path / "x")], capsys)
    assert code == 130 and "run it again to resume" in err


def test_train_into_a_folder_of_another_run_says_how_and_overwrites(tmp_path, capsys):
    base = ["train", "--model", "test_vit", "--model-arg", "img_size=32", "--out",
            str(tmp_path / "t"), "--n", "60", "--batch-size", "20", "--epochs", "1"]
    assert run(base, capsys)[0] == 0
    code, out, err = run([*base[:-1], "2"], capsys)
    assert code == 2 and "epochs: 1 -> 2" in out + err and "--overwrite" in out + err
    assert json.loads((tmp_path / "t" / "train.json").read_text())["config"]["epochs"] == 1
    assert run([*base[:-1], "2", "--overwrite"], capsys)[0] == 0
    assert json.loads((tmp_path / "t" / "train.json").read_text())["config"]["epochs"] == 2


def test_several_transformations_one_folder_each_a_joint_table_and_resume(tmp_path, capsys):
    args = ["invariance", "--model", "test_vit", "--model-arg", "img_size=32", "--samples",
            "6", "--params", "3", "--no-progress", "--seed", "4"]
    out = tmp_path / "two"
    code, _, err = run([*args, "--transform", "rotation, brightness,rotation", "--out",
                        str(out)], capsys)
    assert code == 0, err
    table = pd.read_csv(out / "nv_by_transform.csv")
    assert list(table.columns) == ["layer", "depth", "rotation", "brightness"]
    assert (out / "nv.png").exists() and yaml.safe_load(
        (out / "config.yaml").read_text())["transform"] == ["rotation", "brightness"]
    # a single-family folder is not silently turned into a several-family one, nor back
    single = tmp_path / "single"
    assert run([*args, "--transform", "scale", "--out", str(single)], capsys)[0] == 0
    code, _, err = run([*args, "--transform", "rotation,brightness", "--out", str(single)],
                       capsys)
    assert code == 2 and "per_family_folders" in err and "--overwrite" in err
    code, _, err = run([*args, "--transform", "brightness", "--out", str(out)], capsys)
    assert code == 2 and "per_family_folders" in err
    # each column is its family's own run, and the same as measuring that family alone
    code, _, err = run([*args, "--transform", "brightness", "--out", str(tmp_path / "one")],
                       capsys)
    assert code == 0, err
    alone = pd.read_csv(tmp_path / "one" / "per_layer.csv")
    np.testing.assert_allclose(table["brightness"], alone["nv"], rtol=1e-12)
    np.testing.assert_allclose(
        table["rotation"], pd.read_csv(out / "rotation" / "per_layer.csv")["nv"], rtol=1e-12)

    # a re-run loads finished families
    stamp = {f: (out / f / "result.json").stat().st_mtime_ns for f in ("rotation", "brightness")}
    code, text, _ = run([*args, "--transform", "rotation,brightness", "--out", str(out)],
                        capsys)
    assert code == 0 and text.count("Already measured") == 2
    assert {f: (out / f / "result.json").stat().st_mtime_ns for f in stamp} == stamp
    # another device or batch size is the same measurement
    code, text, _ = run([*args, "--batch-size", "17", "--transform", "rotation", "--out",
                         str(out / "rotation")], capsys)
    assert code == 0 and text.count("Already measured") == 1
    # other settings are refused (nothing lost), and replaced with --overwrite
    other = [*args[:-2], "--seed", "5", "--transform", "rotation,brightness", "--out", str(out)]
    code, text, err = run(other, capsys)
    assert code == 2 and "seed: 4 -> 5" in err and "--overwrite" in err
    assert {f: (out / f / "result.json").stat().st_mtime_ns for f in stamp} == stamp
    code, text, _ = run([*other, "--overwrite"], capsys)
    assert code == 0 and "Already measured" not in text
    assert all((out / f / "result.json").stat().st_mtime_ns != t for f, t in stamp.items())


def test_transform_all_and_a_bad_name_in_a_list(tmp_path):
    from viscope.invariance.command import _families
    from viscope.transforms import list_transforms

    assert _families("all") == [t for t in list_transforms() if t != "identity"]
    from viscope.experiments.config import ALL_FAMILIES  # the mission's ten, and hue

    assert _families("all") == [*ALL_FAMILIES[:6], "hue", *ALL_FAMILIES[6:]]
    cmd = [sys.executable, "-m", "viscope.cli", "invariance", "--model", "test_vit",
           "--model-arg", "img_size=32", "--samples", "4", "--params", "2",
           "--transform", "rotation,brightnes", "--out", str(tmp_path / "x")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Did you mean 'brightness'" in proc.stderr
    assert not (tmp_path / "x").exists()  # refused before anything was measured
    cmd[cmd.index("rotation,brightnes")] = "rotation,brightness,scale"
    proc = subprocess.run([*cmd, "--measure", "nv_se"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "got brightness" in proc.stderr
    assert "--transform rotation,scale" in proc.stderr
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("args,message", [
    (["invarance"], "Did you mean 'invariance'"),
    (["list", "transfroms"], "Did you mean 'transforms'"),
    (["invariance", "--modle", "x"], "No such option"),
    (["invariance", "--model", "test_vit"], "Missing option '--transform'"),
    (["invariance", "--model", "test_vit", "--transform", "rotation", "--out", "x",
      "--samples", "abc"], "Invalid value for '--samples'"),
])
def test_usage_mistakes_give_a_short_message_and_exit_2(args, message, capsys):
    # typer >= 0.20 raises its own copies of click's exceptions: all must read as usage
    # errors (an exception escaping main() would fail this test with its traceback)
    code, _, err = run(args, capsys)
    assert code == 2 and message in err


def test_an_out_path_that_is_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    code, _, err = run(["invariance", "--model", "test_vit", "--model-arg", "img_size=32",
                        "--samples", "4", "--params", "2", "--transform", "rotation",
                        "--no-progress", "--out", str(tmp_path / "f")], capsys)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and "Check the path" in lines[0]


def test_skip_corrupt_on_the_command_line(tmp_path, capsys):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (tmp_path / "imgs" / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(
                tmp_path / "imgs" / c / f"{i}.png")
    (tmp_path / "imgs" / "a" / "bad.png").write_bytes(b"not an image")
    args = ["invariance", "--model", "test_vit", "--model-arg", "img_size=32", "--dataset",
            str(tmp_path / "imgs"), "--transform", "brightness", "--samples", "6",
            "--params", "2", "--no-progress"]
    code, _, err = run([*args, "--out", str(tmp_path / "x")], capsys)
    assert code == 2 and "bad.png" in err and "--skip-corrupt" in err
    with pytest.warns(UserWarning, match="Skipped 1 unreadable"):
        code, _, err = run([*args, "--skip-corrupt", "--out", str(tmp_path / "y")], capsys)
    assert code == 0, err
    assert InvarianceResult.load(tmp_path / "y").meta["samples"] == 6


def test_train_is_reproducible_for_a_seed(tmp_path, capsys):
    # --seed also seeds the random initial weights: the same command gives the same model
    import torch

    base = ["train", "--model", "test_vit", "--model-arg", "img_size=32", "--n", "60",
            "--batch-size", "20", "--epochs", "1"]
    weights = {}
    for name, seed in [("a", "3"), ("b", "3"), ("c", "4")]:
        code, _, err = run([*base, "--seed", seed, "--out", str(tmp_path / name)], capsys)
        assert code == 0, err
        weights[name] = torch.load(tmp_path / name / "best.pt", map_location="cpu")
    flat = {k: torch.cat([t.flatten().float() for t in _tensors(w)]) for k, w in weights.items()}
    assert torch.equal(flat["a"], flat["b"]) and not torch.equal(flat["a"], flat["c"])


def _tensors(obj):
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif hasattr(obj, "flatten") and hasattr(obj, "dtype"):
        yield obj


BAD_COUNTS = ["invariance", "--model", "test_vit", "--model-arg", "img_size=32", "--transform",
              "rotation", "--samples", "6", "--params", "3", "--no-progress"]


def test_cli_rejects_batch_size_zero(tmp_path, capsys):
    code, _, err = run([*BAD_COUNTS, "--batch-size", "0", "--out", str(tmp_path / "run")],
                       capsys)
    assert code == 2
    assert err.startswith("error: Expected batch_size to be an int >= 1")
    assert err.count("\n") == 1


def test_cli_names_the_image_size_when_the_model_rejects_it(tmp_path, capsys):
    code, _, err = run([*BAD_COUNTS, "--image-size", "31", "--out", str(tmp_path / "run")],
                       capsys)
    assert code == 2
    assert err.startswith("error: The model failed on a batch of images of shape (1, 3, 31, 31)")
    assert "--image-size" in err and err.count("\n") == 1


@pytest.mark.parametrize("command", [
    ["list", "layers"],
    ["invariance", "--transform", "rotation", "--out", "{tmp}/inv"],
    ["train", "--out", "{tmp}/train", "--n", "30"],
    ["explain", "--out", "{tmp}/explain"],
])
def test_every_command_with_a_model_takes_pretrained(command, tmp_path, capsys, monkeypatch):
    """--pretrained reaches viscope.models.create as pretrained=True on every command that
    takes --model (as timm's scripts have it), beside --model-arg."""
    from viscope import models
    from viscope.errors import ViscopeError

    def create(name, **kwargs):
        raise ViscopeError(f"create({name!r}, {sorted(kwargs.items())})")

    monkeypatch.setattr(models, "create", create)
    args = [a.replace("{tmp}", str(tmp_path)) for a in command]
    code, _, err = run([*args, "--model", "resnet18", "--pretrained", "--model-arg",
                        "drop_rate=0.1"], capsys)
    assert code == 2
    assert "create('resnet18'," in err and "('pretrained', True)" in err
    assert "('drop_rate', 0.1)" in err
