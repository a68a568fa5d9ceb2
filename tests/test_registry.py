"""The algorithm registry: entry points, Flower's strategies by name, SCAFFOLD, plug-ins."""

from __future__ import annotations

import inspect
import json
import os
from dataclasses import fields
from pathlib import Path

import pytest
from plugins import install_plugin, run_fedsim

from fedsim.algorithms.registry import algorithms, get
from fedsim.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_every_shipped_algorithm_is_registered_by_entry_point() -> None:
    names = set(algorithms())
    flower = {"fedadam", "fedyogi", "fedadagrad", "fedavgm", "fedmedian", "fedtrimmedavg"}
    robust = {"krum", "multikrum", "bulyan", "qfedavg"}
    assert {"fedavg", "fedprox", "fedbn", "scaffold", "fraug", "masha1"} | flower | robust <= names
    with pytest.raises(ConfigError, match=r"strategy: unknown 'nope' \(allowed: .*fedavg"):
        get("nope")


FLOWER = ["fedadam", "fedyogi", "fedadagrad", "fedavgm", "fedmedian", "fedtrimmedavg", "krum",
          "multikrum", "bulyan", "qfedavg"]  # fmt: skip


@pytest.mark.parametrize("name", FLOWER)
def test_flower_configs_use_flowers_names_and_defaults(name: str) -> None:
    import flwr.serverapp.strategy as flower

    from protocols.flower import FLOWER_CLASSES

    spec = get(name)
    params = inspect.signature(getattr(flower, FLOWER_CLASSES[name]).__init__).parameters
    ours = {f.name: f.default for f in fields(spec.config) if f.name != "name"}
    for key, default in ours.items():
        assert key in params, f"{name}: {key} is not a Flower argument"
        theirs = params[key].default
        if theirs is not inspect.Parameter.empty and key != "train_loss_key":
            assert default == theirs, f"{name}.{key}: {default} != Flower's {theirs}"


def test_unknown_key_of_a_flower_strategy_is_one_line(tmp_path: Path) -> None:
    from fedsim.engine.conf import compose

    with pytest.raises(ConfigError, match=r"strategy\.etaa"):
        compose(["strategy=fedadam", "strategy.etaa=0.1", f"output_dir={tmp_path}"])
    with pytest.raises(ConfigError, match=r"strategy\.beta_1: must be in \[0, 1\)"):
        compose(["strategy=fedadam", "strategy.beta_1=1.5", f"output_dir={tmp_path}"])
    with pytest.raises(ConfigError, match=r"fedbn keeps batch-norm layers local.*'logreg'"):
        compose(["strategy=fedbn", "backbone=logreg", f"output_dir={tmp_path}"])


def test_an_installed_package_adds_a_strategy_by_entry_point(tmp_path: Path) -> None:
    site = install_plugin("plugin_example", tmp_path)
    env = dict(os.environ, PYTHONPATH=str(site))
    common = ["strategy=coordmedian", "rounds=2", "backbone.width=0.25", "progress=false",
              f"output_dir={tmp_path / 'runs'}"]  # fmt: skip
    done = run_fedsim(common, env)
    assert done.returncode == 0, done.stderr
    record = json.loads((tmp_path / "runs/digits_iid/coordmedian/seed-0/run.json").read_text())
    assert record["status"] == "complete" and record["final"]["eval/acc"] > 0.1
    bad = run_fedsim([*common, "strategy.trim=0.7"], env)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        "fedsim: error: strategy.trim: must be in [0, 0.5), got 0.7"
    ]
    without = run_fedsim(common)  # not installed: an unknown name, one line
    assert without.returncode == 2 and "unknown 'coordmedian'" in without.stderr


def _recorded_rounds(strategy: str, tmp_path: Path, *extra: str):  # type: ignore[no-untyped-def]
    """Run ``strategy`` on a RecordingGrid; returns per round the global model the clients
    received and the models they sent back, and the final metrics."""
    from recording import RecordingGrid

    from fedsim.engine.app import CONFIG_KEY, make_client_app
    from fedsim.engine.conf import compose, to_json
    from fedsim.engine.server import run_experiment
    from fedsim.records import numpy_from_arrays

    cfg = compose([f"strategy={strategy}", f"output_dir={tmp_path}", "progress=false", *extra])
    grid = RecordingGrid(make_client_app(), cfg.scenario.num_clients, {CONFIG_KEY: to_json(cfg)})
    metrics = run_experiment(grid, cfg, tmp_path / "run", callbacks=[])

    def train(messages):  # type: ignore[no-untyped-def]
        return [m for m in messages if m.has_content() and m.metadata.message_type == "train"]

    sent, replies = train(grid.sent), train(grid.received)
    n = cfg.scenario.num_clients  # every client takes part in every round
    assert len(sent) == len(replies) == cfg.rounds * n
    arrays = [numpy_from_arrays(m.content.array_records["arrays"]) for m in sent]
    received = [arrays[r * n] for r in range(cfg.rounds)]
    returned = [
        [numpy_from_arrays(m.content.array_records["arrays"]) for m in replies[r * n : (r + 1) * n]]
        for r in range(cfg.rounds)
    ]
    return received, returned, metrics


def _relative_drift(x, ys, keys) -> float:  # type: ignore[no-untyped-def]
    """Spread of the client updates ``u_i = y_i - x`` around their mean, relative to it:
    ``mean_i |u_i - mean(u)|^2 / |mean(u)|^2`` over the trainable parameters ``keys``."""
    import numpy as np

    u = np.stack(
        [np.concatenate([(y[k] - x[k]).ravel().astype(np.float64) for k in keys]) for y in ys]
    )
    mean = u.mean(axis=0)
    return float(((u - mean) ** 2).sum(axis=1).mean() / (mean @ mean))


def test_scaffold_against_fedavg_on_pathological_label_skew(tmp_path: Path) -> None:
    """Same seed, 3 rounds of 10 local SGD steps (lr 0.05) on digits_pathological_2.

    What a reader can check (arXiv 1910.06378, Algorithm 1, full participation,
    ``eta_g = 1``, option II):

    * round 1 starts from ``c = c_i = 0``: SCAFFOLD's local steps are FedAvg's, and the
      server takes the plain mean of the client models (FedAvg weights by examples);
    * after any round, the server variate is the mean of the clients',
      ``c = mean_i c_i = (x_prev - x_new) / (K lr)``: the last global step per local step
      (checked after round 3 on the checkpointed ``c``);
    * from round 2 the correction ``c - c_i`` pulls every client towards the global
      direction, so the client updates spread less around their mean than FedAvg's
      (measured on seeds 0-7: at most 0.72 of FedAvg's relative spread in round 2,
      0.55 in round 3), and the global model's loss after round 3 is lower on all eight
      seeds (by 0.04 to 0.12; accuracy is not: seed 0 at round 4 is lower).
    """
    import numpy as np
    import torch

    common = ["scenario=digits_pathological_2", "rounds=3", "seed=0", "backbone.width=0.25",
              "train.local_steps=10", "train.lr=0.05", "runtime.threads=1"]  # fmt: skip
    fx, fy, fedavg = _recorded_rounds("fedavg", tmp_path / "fedavg", *common)
    sx, sy, scaffold = _recorded_rounds("scaffold", tmp_path / "scaffold", *common,
                                        "checkpoint_every=1")  # fmt: skip
    with np.load(tmp_path / "scaffold/run/checkpoint.npz", allow_pickle=False) as z:
        c = {k.split("/c/", 1)[1]: z[k] for k in z.files if "/c/" in k}
    keys = sorted(c)  # the trainable parameters
    assert keys and all(k in sx[0] for k in keys), "the server control variate is checkpointed"

    # round 1: the same client models; SCAFFOLD's new model is their plain mean
    assert all(np.array_equal(a[k], b[k]) for a, b in zip(sy[0], fy[0], strict=True) for k in keys)
    for k in keys:
        mean = np.mean([y[k].astype(np.float64) for y in sy[0]], axis=0)
        np.testing.assert_allclose(sx[1][k], mean, rtol=1e-5, atol=1e-7, err_msg=k)
    # c after round 3 = the round's global step per local step
    final = {k: v.numpy() for k, v in torch.load(tmp_path / "scaffold/run/final_model.pt").items()}
    for k in keys:
        step = (sx[2][k].astype(np.float64) - final[k]) / (10 * 0.05)
        np.testing.assert_allclose(c[k], step, rtol=1e-3, atol=1e-5, err_msg=k)
    # rounds 2 and 3: less client drift than FedAvg's; a lower global loss after round 3
    for r in (1, 2):
        d_fedavg = _relative_drift(fx[r], fy[r], keys)
        d_scaffold = _relative_drift(sx[r], sy[r], keys)
        assert d_scaffold < 0.8 * d_fedavg, (r + 1, d_scaffold, d_fedavg)
    assert scaffold["eval/global_loss"] < fedavg["eval/global_loss"], (scaffold, fedavg)


def test_readme_strategy_table_lists_every_registered_name() -> None:
    text = (REPO / "README.md").read_text()
    missing = [n for n in algorithms() if f"| `{n}` |" not in text]
    assert not missing, f"README's strategy table lacks {missing}"


def _dp_round(kind: str, noise: float, tmp_path: Path, backbone: str = "mlp"):  # type: ignore[no-untyped-def]
    """One FedProx round under ``dp.kind=kind`` with clipping norm 0.01 (the adaptive
    kinds start from it): the model the clients received, their replies with their
    num-examples, and the new global model (float64 arrays)."""
    import numpy as np
    import torch
    from recording import RecordingGrid

    from fedsim.engine.app import CONFIG_KEY, make_client_app
    from fedsim.engine.conf import compose, to_json
    from fedsim.engine.server import run_experiment
    from fedsim.records import numpy_from_arrays

    cfg = compose(["strategy=fedprox", "rounds=1", f"backbone={backbone}", "backbone.width=0.25",
                   "train.local_steps=4", "runtime.threads=1", "progress=false",
                   f"output_dir={tmp_path}", f"dp.kind={kind}", f"dp.noise_multiplier={noise}",
                   "dp.clipping_norm=0.01", "dp.initial_clipping_norm=0.01"])  # fmt: skip
    grid = RecordingGrid(make_client_app(), cfg.scenario.num_clients, {CONFIG_KEY: to_json(cfg)})
    run_experiment(grid, cfg, tmp_path / "run", callbacks=[])
    sent = [m for m in grid.sent if m.metadata.message_type == "train"]
    replies = [m for m in grid.received if m.has_content() and m.metadata.message_type == "train"]

    def f64(arrays):  # type: ignore[no-untyped-def]
        return {k: np.asarray(v, dtype=np.float64) for k, v in arrays.items()}

    start = f64(numpy_from_arrays(sent[0].content.array_records["arrays"]))
    ys = [f64(numpy_from_arrays(m.content.array_records["arrays"])) for m in replies]
    weights = [float(m.content.metric_records["metrics"]["num-examples"]) for m in replies]  # type: ignore[arg-type]
    final = f64({k: v.numpy() for k, v in torch.load(tmp_path / "run/final_model.pt").items()})
    return start, ys, weights, final


@pytest.mark.parametrize("kind", ["server_fixed", "server_adaptive", "client_fixed",
                                  "client_adaptive"])  # fmt: skip
def test_flowers_dp_wrappers_clip_to_the_norm_and_add_noise_of_the_scale(
    kind: str, tmp_path: Path
) -> None:
    """Flower's DP wrappers around a fedsim strategy (FedProx, 10 clients, MLP without
    integer buffers), round 1, clipping norm ``C = 0.01``, ``m = 10`` clients.

    * clipping: every client update ``u_i = y_i - x`` (norm 0.05-0.07 here) is scaled to
      ``u_i min(1, C / |u_i|)``, on the client (the client kinds: every reply has norm
      ``C``) or on the server (the replies are raw); without noise the new model is
      ``x + sum_i w_i clip(u_i)`` (FedProx's example-weighted mean), of norm at most ``C``;
    * noise: the same run with ``noise_multiplier z = 0.5`` differs only by the Gaussian
      noise, of standard deviation ``z C / m`` (fixed clipping).  The adaptive kinds add
      it after the norm's first update: all 10 updates were clipped, so
      ``C_1 = C exp(-0.2 (1 - 0.5))`` (``clip_norm_lr``, target quantile; the clipped
      fraction Flower uses is itself noised, which moves ``C_1`` by about 1 %), with the
      effective multiplier ``(z^-2 - (2 m / 20)^-2)^-1/2`` (Andrew et al., arXiv
      1905.03871, as Flower sets it).

    Flower draws the noise from numpy's global generator, unseeded: over the 6,310
    weights the measured deviation is within about 1 % of the expected one, so the 10 %
    band below is many standard errors wide.
    """
    import math

    import numpy as np

    clip_norm, z, m = 0.01, 0.5, 10

    def norm(arrays: dict[str, np.ndarray]) -> float:
        return math.sqrt(sum(float((v**2).sum()) for v in arrays.values()))

    x, ys, weights, quiet = _dp_round(kind, 0.0, tmp_path / "quiet")
    updates = [{k: y[k] - x[k] for k in x} for y in ys]
    norms = [norm(u) for u in updates]
    assert len(norms) == m
    if kind.startswith("client"):  # clipped before sending
        np.testing.assert_allclose(norms, clip_norm, rtol=1e-4)
    else:  # raw updates, clipped by the server
        assert min(norms) > 3 * clip_norm, norms
    total = sum(weights)
    for k in x:
        clipped = sum(w / total * u[k] * min(1.0, clip_norm / n)
                      for w, u, n in zip(weights, updates, norms, strict=True))  # fmt: skip
        np.testing.assert_allclose(quiet[k], x[k] + clipped, rtol=1e-5, atol=1e-8, err_msg=k)
    assert norm({k: quiet[k] - x[k] for k in x}) <= clip_norm * (1 + 1e-5)

    _, _, _, noisy = _dp_round(kind, z, tmp_path / "noisy")
    noise = np.concatenate([(noisy[k] - quiet[k]).ravel() for k in x])
    if kind.endswith("fixed"):
        std = z * clip_norm / m
    else:
        effective = (z**-2 - (2 * m / 20) ** -2) ** -0.5
        std = effective * clip_norm * math.exp(-0.2 * (1.0 - 0.5)) / m
    assert noise.size > 6000
    assert abs(noise.std() / std - 1.0) < 0.1, (noise.std(), std)
    assert abs(noise.mean()) < 5 * std / math.sqrt(noise.size)


def test_dp_keeps_integer_buffers_home_so_replies_respect_the_clipping_bound(
    tmp_path: Path,
) -> None:
    """The digits CNN has BatchNorm step counters (integers Flower's clipping cannot
    scale): under ``dp.kind`` they stay on the clients, so every clipped reply's update
    has norm exactly ``C`` (with the counters sent it was about 9, whatever ``C``)."""
    import math

    x, ys, _, _ = _dp_round("client_fixed", 0.0, tmp_path, backbone="cnn_digits")
    assert not [k for k in x if k.endswith("num_batches_tracked")]  # not on the downlink
    for y in ys:
        assert set(y) == set(x)  # nor on the uplink
        n = math.sqrt(sum(float(((y[k] - x[k]) ** 2).sum()) for k in x))
        assert abs(n - 0.01) < 1e-6, n
