"""The shared training loop's vision features: schedules, optimiser details, model
selection on a validation split, checkpoints and frozen layers, the spread metrics."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from fedsim.algorithms.payloads import EvalRes
from fedsim.algorithms.schedules import lr_at, validate_train
from fedsim.algorithms.wrap.server import summarise_evaluation
from fedsim.config import BackboneConfig, TrainConfig
from fedsim.engine.selection import Selection
from fedsim.errors import ConfigError
from fedsim.models.modelzoo import freeze, frozen_keys, initial_model, load_checkpoint


def _rows(record: dict[str, Any]) -> list[dict[str, Any]]:
    path = Path(record["run_dir"]) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


# ------------------------------------------------------------------ schedules


def test_schedules_follow_their_formulas() -> None:
    const = TrainConfig(lr=0.1)
    assert [lr_at(const, t, 10) for t in (1, 5, 10)] == [0.1, 0.1, 0.1]
    expo = TrainConfig(lr=0.1, schedule="exponential", lr_decay=0.9)
    assert lr_at(expo, 1, 10) == pytest.approx(0.1)
    assert lr_at(expo, 4, 10) == pytest.approx(0.1 * 0.9**3)
    step = TrainConfig(lr=0.1, schedule="step", lr_decay=0.5, lr_step=3)
    assert [lr_at(step, t, 10) for t in (1, 3, 4, 6, 7)] == pytest.approx(
        [0.1, 0.1, 0.05, 0.05, 0.025]
    )
    cos = TrainConfig(lr=0.1, schedule="cosine", lr_min=0.01)
    assert lr_at(cos, 1, 5) == pytest.approx(0.1)
    assert lr_at(cos, 3, 5) == pytest.approx(0.01 + 0.09 * (1 + math.cos(math.pi / 2)) / 2)
    assert lr_at(cos, 5, 5) == pytest.approx(0.01)
    assert lr_at(cos, 1, 1) == pytest.approx(0.1)  # one round: no decay
    warm = TrainConfig(lr=0.1, schedule="cosine", warmup_rounds=4)
    assert lr_at(warm, 1, 9) == pytest.approx(0.1 * (1 + math.cos(0)) / 2 / 4)
    assert lr_at(warm, 2, 9) == pytest.approx(0.1 * (1 + math.cos(math.pi / 8)) / 2 * 2 / 4)
    assert lr_at(warm, 5, 9) == pytest.approx(0.1 * (1 + math.cos(math.pi / 2)) / 2)


@pytest.mark.parametrize(
    ("cfg", "match"),
    [
        (TrainConfig(schedule="linear"), r"train.schedule: unknown 'linear' \(allowed: "),
        (TrainConfig(schedule="exponential", lr_decay=-0.5), "train.lr_decay: must be"),
        (TrainConfig(schedule="exponential", lr_decay=1.5), "train.lr_decay: a decay must be <= 1"),
        (TrainConfig(lr_decay=float("nan")), "train.lr_decay: must be a finite"),
        (TrainConfig(lr_step=0), "train.lr_step: must be >= 1"),
        (TrainConfig(lr=0.1, lr_min=0.2), r"train.lr_min: must be in \[0, train.lr"),
        (TrainConfig(warmup_rounds=-1), "train.warmup_rounds"),
        (TrainConfig(clip_norm=-1.0), "train.clip_norm"),
        (TrainConfig(label_smoothing=1.0), r"train.label_smoothing: must be in \[0, 1\)"),
        (TrainConfig(nesterov=True), "train.nesterov: needs"),
        (TrainConfig(trainable=[""]), r"train.trainable\[0\]"),
    ],
)
def test_bad_training_keys_are_refused_with_their_key(cfg: TrainConfig, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        validate_train(cfg)


def test_train_lr_is_logged_and_used(fast_cfg: Any) -> None:
    from fedsim.engine.runner import execute

    cfg = fast_cfg("train.schedule=exponential", "train.lr_decay=0.5", "rounds=3")
    rows = _rows(execute(cfg))
    assert [r["train/lr"] for r in rows] == pytest.approx([0.05, 0.025, 0.0125])
    # the rate reaches the optimiser: a negligible rate leaves the loss where it was
    tiny = fast_cfg("train.lr=1e-12", "rounds=2", f"output_dir={cfg.output_dir}/z")
    frozen = _rows(execute(tiny))
    assert frozen[0]["train/loss"] == pytest.approx(frozen[1]["train/loss"], abs=0.05)
    assert rows[1]["train/loss"] < rows[0]["train/loss"] - 0.1


# ------------------------------------------------------------------ model selection


def test_selection_keeps_each_clients_best_validation_round() -> None:
    sel = Selection({0: "a", 1: "b"})
    rounds = [
        {"eval/val_acc_client/0": 0.5, "eval/acc_client/0": 0.40,
         "eval/val_acc_client/1": 0.7, "eval/acc_client/1": 0.60},
        {"eval/val_acc_client/0": 0.8, "eval/acc_client/0": 0.55,
         "eval/val_acc_client/1": 0.6, "eval/acc_client/1": 0.90},
        {"eval/val_acc_client/0": 0.8, "eval/acc_client/0": 0.99,  # a tie keeps round 2
         "eval/val_acc_client/1": 0.65, "eval/acc_client/1": 0.95},
    ]  # fmt: skip
    out = {}
    for rnd, metrics in enumerate(rounds, start=1):
        out = sel.update(rnd, metrics)
    assert sel.best == {0: (0.8, 0.55, 2), 1: (0.7, 0.60, 1)}
    assert out["eval/acc_at_best_val"] == pytest.approx((0.55 + 0.60) / 2)
    assert out["eval/acc_at_best_val_min"] == pytest.approx(0.55)
    assert out["eval/acc_at_best_val_domain/a"] == pytest.approx(0.55)
    rows = [{"round": i + 1, **m} for i, m in enumerate(rounds)]
    assert Selection.replay(rows, {0: "a", 1: "b"}).best == sel.best


def test_global_model_selected_on_mean_validation_accuracy() -> None:
    sel = Selection()
    sel.update(1, {"eval/val_acc": 0.3, "eval/global_acc": 0.31})
    sel.update(2, {"eval/val_acc": 0.6, "eval/global_acc": 0.52})
    out = sel.update(3, {"eval/val_acc": 0.5, "eval/global_acc": 0.70})
    assert out["eval/global_acc_at_best_val"] == pytest.approx(0.52)
    assert out["eval/global_best_val_round"] == 2


def test_run_with_a_validation_split_reports_selection(fast_cfg: Any) -> None:
    from fedsim.data.federation import load_federation
    from fedsim.engine.runner import execute

    cfg = fast_cfg("scenario.evaluation.validation_fraction=0.1", "rounds=2")
    fed = load_federation(cfg.scenario, cfg.seed)
    assert fed.val_parts is not None
    for tr, ho, va in zip(fed.train_parts, fed.holdout_parts, fed.val_parts, strict=True):
        assert len(va) > 0
        assert not set(tr) & set(va) and not set(ho) & set(va) and not set(tr) & set(ho)
    rows = _rows(execute(cfg))
    assert all("eval/val_acc" in r and "eval/acc_at_best_val" in r for r in rows)
    replay = Selection.replay(rows)
    assert rows[-1]["eval/acc_at_best_val"] == pytest.approx(
        replay.summary()["eval/acc_at_best_val"]
    )


def test_spread_metrics_p10_and_worst_client() -> None:
    per = {i: EvalRes(10, {"acc": a, "loss": 1.0}) for i, a in enumerate([0.9, 0.1, 0.5, 0.7])}
    out = summarise_evaluation(per, [])
    assert out["acc_min"] == pytest.approx(0.1)
    # numpy's linear percentile over [0.1, 0.5, 0.7, 0.9]: 0.1 + 0.3 * (0.5 - 0.1)
    assert out["acc_p10"] == pytest.approx(0.22)


def test_domain_file_test_scores_every_test_sample_of_the_domain(fast_cfg: Any) -> None:
    from fedsim.data.federation import build_federation

    cfg = fast_cfg("scenario.evaluation.test=domain_file")
    fed = build_federation(cfg.scenario, cfg.seed)
    _, y = fed.test_set(3)
    assert len(y) == len(fed.data.test_y) > len(fed.client(3).y_holdout)
    assert torch.equal(y, fed.data.test_y)
    with pytest.raises(ConfigError, match=r"evaluation.test: unknown 'all'"):
        from fedsim.engine.validation import validate

        validate(fast_cfg("scenario.evaluation.test=all"))


# ------------------------------------------------------------------ checkpoint, frozen


def _model() -> torch.nn.Module:
    return initial_model(BackboneConfig(name="cnn_digits", width=0.25), (1, 8, 8), 10, 0)


def test_checkpoint_round_trip_and_mismatches(tmp_path: Path) -> None:
    src = initial_model(BackboneConfig(name="cnn_digits", width=0.25), (1, 8, 8), 10, 7)
    path = tmp_path / "w.pt"
    torch.save(src.state_dict(), path)
    cfg = BackboneConfig(name="cnn_digits", width=0.25, checkpoint=str(path))
    loaded = initial_model(cfg, (1, 8, 8), 10, 0)  # another seed: the file wins
    for k, v in src.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    # a backbone without its head (self-supervised pretraining): the head keeps its init
    torch.save({k: v for k, v in src.state_dict().items() if not k.startswith("head")}, path)
    kept = load_checkpoint(_model(), str(path))
    assert kept == ["head.bias", "head.weight"]
    wide = BackboneConfig(name="cnn_digits", width=0.5, checkpoint=str(path))
    with pytest.raises(ConfigError, match=r"backbone.checkpoint: key 'conv1.weight' has shape"):
        initial_model(wide, (1, 8, 8), 10, 0)
    missing = BackboneConfig(name="cnn_digits", checkpoint=str(tmp_path / "nope.pt"))
    with pytest.raises(ConfigError, match=r"backbone.checkpoint: file .* does not exist"):
        initial_model(missing, (1, 8, 8), 10, 0)
    (tmp_path / "junk.pt").write_text("not a tensor file")
    junk = BackboneConfig(name="cnn_digits", checkpoint=str(tmp_path / "junk.pt"))
    with pytest.raises(ConfigError, match="not a readable torch state dict"):
        initial_model(junk, (1, 8, 8), 10, 0)


def test_freeze_selects_by_prefix_and_refuses_unknown_prefixes() -> None:
    model = _model()
    frozen = freeze(model, ["fc2", "bn5", "head"])
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {
        "fc2.weight",
        "fc2.bias",
        "bn5.weight",
        "bn5.bias",
        "head.weight",
        "head.bias",
    }
    assert "conv1.weight" in frozen and "bn1.running_mean" in frozen
    assert "bn5.running_mean" not in frozen and "head.weight" not in frozen
    assert frozen == frozen_keys(model)
    with pytest.raises(ConfigError, match=r"train.trainable: prefix 'layer4' matches no module"):
        freeze(_model(), ["layer4"])
    with pytest.raises(ConfigError, match=r"prefix 'fc' matches no module"):
        freeze(_model(), ["fc"])  # a prefix is a module name, not a string prefix


def test_frozen_layers_do_not_train_and_do_not_travel(fast_cfg: Any) -> None:
    from fedsim.engine.runner import execute

    full = execute(fast_cfg("rounds=2"))
    part = execute(
        fast_cfg("rounds=2", "train.trainable=[head]", f"output_dir={full['run_dir']}/p")
    )
    init = initial_model(BackboneConfig(name="cnn_digits", width=0.25), (1, 8, 8), 10, 0)
    final = torch.load(Path(part["run_dir"]) / "final_model.pt", weights_only=True)
    for k, v in init.state_dict().items():
        if k.startswith("head"):
            assert not torch.equal(final[k], v), k  # the head trained
        else:
            assert torch.equal(final[k], v), k  # everything else is the initial model
    up_full = _rows(full)[0]["comm/bytes_up"]
    up_part = _rows(part)[0]["comm/bytes_up"]
    head_bytes = 4 * sum(v.numel() for k, v in init.state_dict().items() if k.startswith("head"))
    assert up_part == 10 * head_bytes  # 10 clients send their head and nothing else
    assert up_full > 20 * up_part


# ------------------------------------------------------------------ figures


class _Always(torch.nn.Module):
    """Predicts class 2 for every input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(len(x), 3)
        out[:, 2] = 1.0
        return out


def test_confusion_matrix_by_hand() -> None:
    from fedsim.tracking.figures import confusion_image, evaluate_with_confusion

    y = torch.tensor([0, 1, 2, 2, 1])
    acc, _, matrix = evaluate_with_confusion(
        _Always(), torch.zeros(5, 1), y, 3, torch.device("cpu"), batch_size=2
    )
    assert acc == pytest.approx(2 / 5)
    assert matrix.tolist() == [[0, 0, 1], [0, 0, 2], [0, 0, 2]]
    image = confusion_image(matrix, cell=4)
    assert image.shape == (12, 12, 3) and image.dtype.name == "uint8"
    assert tuple(image[1, 9]) == (253, 231, 37)  # a whole row predicted as class 2
    assert tuple(image[1, 1]) == (68, 1, 84)  # nothing


def test_tensorboard_gets_the_confusion_image_and_the_client_histogram(fast_cfg: Any) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from fedsim.engine.runner import execute

    rec = execute(fast_cfg("rounds=2"))
    events = EventAccumulator(rec["run_dir"], size_guidance={"images": 0, "histograms": 0})
    events.Reload()
    assert [e.step for e in events.Images("eval/global_confusion")] == [1, 2]
    hist = events.Histograms("eval/acc_clients")
    assert [h.step for h in hist] == [1, 2]
    assert hist[-1].histogram_value.num == 10  # one accuracy per client
    assert "eval/acc_p10" in events.Tags()["scalars"]


def test_augmented_runs_do_not_depend_on_the_worker_count(fast_cfg: Any, tmp_path: Path) -> None:
    from fedsim.engine.runner import execute

    common = ("rounds=2", "runtime.threads=1", "train.augment.recipe=fraug_digits")
    inline = _rows(execute(fast_cfg(*common, f"output_dir={tmp_path}/a")))
    workers = _rows(execute(fast_cfg(*common, "runtime.workers=2", f"output_dir={tmp_path}/b")))
    plain = _rows(execute(fast_cfg("rounds=2", "runtime.threads=1", f"output_dir={tmp_path}/c")))
    for key in ("train/loss", "eval/acc", "eval/loss", "eval/global_acc"):
        assert [r[key] for r in workers] == [r[key] for r in inline], key  # bit-identical
    assert inline[0]["train/loss"] != plain[0]["train/loss"]  # augmentation was on
