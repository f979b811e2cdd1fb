"""The trainer's command line as a user runs it (python -m trainer in a subprocess, in a temporary
folder), its recipes, and checkpoints written before recipes were files."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from trainer.recipe import Recipe, RecipeError, read_recipe, recipe_from_dict  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def trainer(*args, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "trainer", *map(str, args)], capture_output=True, text=True,
                          timeout=300, env=env, cwd=cwd)


def one_line_error(out: subprocess.CompletedProcess, *fragments: str) -> None:
    """Exit code 2 and one `error:` line naming each fragment, no traceback."""
    assert out.returncode == 2, out.stderr[-2000:]
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr[-2000:]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def toy_dataset(root: Path, n: int = 8) -> Path:
    import cv2

    rng = np.random.default_rng(0)
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True)
    for i in range(n):
        img = rng.integers(80, 200, (48, 64, 3), dtype=np.uint8)
        mask = np.zeros((48, 64), np.uint8)
        cv2.circle(mask, (20 + 3 * i, 24), 10, 255, -1)
        img[mask > 0] = (60, 60, 170)
        cv2.imwrite(str(root / "images" / f"f{i}.png"), img)
        cv2.imwrite(str(root / "masks" / f"f{i}.png"), mask)
    return root


def test_a_run_folder_holding_a_run_needs_resume_or_overwrite(tmp_path):
    toy_dataset(tmp_path / "toy")
    (tmp_path / "toy.toml").write_text('model = "ultraseg-108k"\ndata = ["toy"]\nsize = [48, 64]\nepochs = 5\n'
                                       'batch_size = 4\n')
    run = ["train", "--recipe", "toy.toml", "--epochs", "1", "--limit", "4", "--cache-dir", "cache", "--out", "run"]
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")  # a folder without run files is fine to train into
    first = trainer(*run, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    log = (tmp_path / "run" / "log.json").read_text()
    options = json.loads((tmp_path / "run" / "options.json").read_text())
    assert options["recipe_name"] == "toy" and options["overridden"] == ["epochs"]
    assert options["recipe"]["epochs"] == 1 and options["recipe"]["size"] == [48, 64]
    one_line_error(trainer(*run, cwd=tmp_path), "run: holds a run already", "--resume", "--overwrite")
    assert (tmp_path / "run" / "log.json").read_text() == log  # untouched
    again = trainer(*run, "--overwrite", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(json.loads((tmp_path / "run" / "log.json").read_text())) == 1  # a new run, not appended
    assert (tmp_path / "run" / "notes.txt").read_text() == "mine"


def test_export_and_convert_never_write_over_their_input(tmp_path):
    (tmp_path / "runs").mkdir()
    best = tmp_path / "runs" / "best.pt"
    best.write_bytes(b"a checkpoint")
    one_line_error(trainer("export", "runs/best.pt", "-o", "runs/../runs/best.pt", cwd=tmp_path),
                   "would overwrite its own input")
    os.symlink(best, tmp_path / "link.pt")
    one_line_error(trainer("export", "link.pt", "-o", "runs/best.pt", cwd=tmp_path), "would overwrite")
    (tmp_path / "up.pth").write_bytes(b"weights")
    one_line_error(trainer("convert-upstream", "up.pth", "-o", "./up.pth", cwd=tmp_path), "would overwrite")
    assert best.read_bytes() == b"a checkpoint" and (tmp_path / "up.pth").read_bytes() == b"weights"


def test_a_missing_or_foreign_checkpoint_is_one_line(tmp_path):
    one_line_error(trainer("export", "runs/none/best.pt", "-o", "out.safetensors", cwd=tmp_path),
                   "runs/none/best.pt: no such checkpoint")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    one_line_error(trainer("export", "junk.pt", "-o", "out.safetensors", cwd=tmp_path),
                   "junk.pt: not a trainer checkpoint")
    assert not (tmp_path / "out.safetensors").exists()


def test_recipe_errors_are_one_line(tmp_path, capsys, monkeypatch):
    from trainer.__main__ import main

    def error(*args) -> str:
        assert main(list(args)) == 2
        lines = capsys.readouterr().err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ")
        return lines[0]

    monkeypatch.chdir(tmp_path)
    Path("bad.toml").write_text('model = "ultraseg-108k"\nlearning_rate = 0.1\n')
    assert "bad.toml: unknown recipe key(s) ['learning_rate']" in error("train", "--recipe", "bad.toml")
    Path("typo.toml").write_text('model = "ultraseg-108k"\nepochs = "ten"\n')
    assert "'epochs' is 'ten', expected an integer" in error("train", "--recipe", "typo.toml")
    assert "missing.toml: cannot read it" in error("train", "--recipe", "missing.toml")
    assert "unknown model variant 'ultraseg-3k'" in error("train", "--model", "ultraseg-3k", "--data", "x")
    assert "nothing to resume" in error("train", "--out", "nothing", "--resume")
    assert "unknown weights name 'no-such-model'" in error("train", "--data", "x", "--init", "no-such-model")


def test_recipe_keys_are_typed_and_bounded():
    r = recipe_from_dict({"data": ["a", "b"], "size": [288, 448], "lr": 0, "max_minutes": 25})
    assert r.data == ("a", "b") and r.size == (288, 448) and r.lr == 0.0 and r.max_minutes == 25.0
    for bad, words in [({"size": 100}, "multiple of 16"), ({"epochs": True}, "an integer"),
                       ({"data": "a"}, "a list of strings"), ({"paste_small": 2}, "[0, 1]"),
                       ({"output_prior": 0}, "(0, 1)"), ({"lr": -1e-3}, "learning rate"),
                       ({"nope": 1}, "unknown recipe key")]:
        with pytest.raises(RecipeError, match=words.replace("[", r"\[")):
            recipe_from_dict(bad)
    assert recipe_from_dict(Recipe(size=(320, 320)).to_dict()).size == (320, 320)


def _prose_number(recipe_line: str, before: str) -> str:
    return recipe_line.split(before, 1)[1].split(",", 1)[0].split()[0]


@pytest.mark.parametrize("path", sorted((REPO / "weights").glob("*.safetensors")), ids=lambda p: p.stem)
def test_every_shipped_weights_file_has_the_recipe_of_its_run(path):
    """recipes/<file>.toml holds the hyper-parameters the file's provenance records of its last run."""
    from npseg import weights as weights_file

    w = weights_file.load(path)
    prov, recipe = w.provenance, read_recipe(REPO / "recipes" / f"{path.stem}.toml")
    # a key newer than the file is absent from its record and was at its default then
    assert prov["recipe"]["name"] == path.stem and recipe_from_dict(prov["recipe"]["settings"]) == recipe
    line = prov["recipe"]["summary"]  # the run's own record, written when it was exported
    assert recipe.model == w.config.name and recipe.seed == prov["seed"]
    assert recipe.epochs == prov["epochs_planned"] and tuple(w.input_size) == (recipe.size,) * 2
    from_scratch = not isinstance(prov["init"], dict)  # "random (seeded)"
    assert recipe.init_sha256 == (None if from_scratch else prov["init"]["tensors_sha256"])
    assert float(_prose_number(line, "Adam lr ")) == recipe.lr
    assert int(_prose_number(line, "batch ")) == recipe.batch_size
    assert int(_prose_number(line, "patience ")) == recipe.patience
    assert sorted(Path(d).name for d in recipe.data) == sorted(prov["datasets"])
    assert ("pasted into 0.5 of samples" in line) == (recipe.paste_small == 0.5)
    assert (recipe.select_on is not None) == ("alone" in line)
    assert ("zoom" in line) == (recipe.augmentation == "strong")


def test_a_checkpoint_written_before_recipes_resumes_unless_it_used_a_retired_option(tmp_path):
    """Format-1 checkpoints held flat options; those at their neutral values read as a recipe, any
    other value of a retired option is refused in one line."""
    from trainer.checkpoint import CheckpointError, checkpoint_provenance, options_from_checkpoint

    flat = {"variant": "ultraseg-108k", "data": ["/d/toy"], "run_dir": "runs/old", "epochs": 3, "batch_size": 2,
            "lr": 1e-3, "patience": 10, "seed": 4, "max_minutes": None, "device": "cpu", "threads": 1,
            "cache_dir": "cache", "skip_bad": False, "limit": None, "workers": 0, "init": None,
            "augmentation": "strong", "size": 320, "empty_dice_area": None, "train_grown_only": False,
            "select_on": None, "splits_from": [], "repeat_small": None, "paste_small": 0.5, "freeze_bn": False,
            "lovasz": 0.0, "ema": None, "sam": 0.0}
    ckpt = {"format": "npseg-trainer-checkpoint-1", "options": flat, "datasets": ["/d/toy"], "splits": {},
            "epoch": 1, "best_epoch": 1, "best_val_dice": 0.5, "train_seconds": 60}
    opts = options_from_checkpoint(ckpt)
    assert opts.recipe.model == "ultraseg-108k" and opts.recipe.size == 320 and opts.out == "runs/old"
    assert opts.recipe.paste_small == 0.5 and opts.recipe.augmentation == "strong"
    assert checkpoint_provenance(ckpt, "best.pt")["recipe"]["settings"]["seed"] == 4
    for retired, value in (("ema", 0.999), ("freeze_bn", True), ("repeat_small", [0.01, 3])):
        with pytest.raises(CheckpointError, match=f"no longer has .*'{retired}'"):
            options_from_checkpoint({**ckpt, "options": {**flat, retired: value}})
