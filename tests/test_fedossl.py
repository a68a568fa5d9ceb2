"""FedoSSL maths on hand-checkable numbers, and one short federated run on the wire."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from recording import RecordingGrid

from clients.fedossl import (
    STATE_KEY,
    FedoSSLObjective,
    hide_labels,
    margin_cross_entropy,
    pair_partners,
    suppressed_loss,
)
from fedsim.config import AugmentConfig
from fedsim.data.augment import Augmenter, build_augmenter, resolve
from fedsim.data.augment_params import AugParams
from fedsim.engine.app import CONFIG_KEY, make_client_app
from fedsim.engine.conf import to_json
from fedsim.engine.server import run_experiment
from fedsim.errors import ConfigError
from protocols.fedossl import GLOBAL_RECORD, LOCAL_RECORD, FedoSSLConfig, validate_fedossl
from protocols.fedossl_math import (
    align_centroids,
    global_clustering,
    local_kmeans,
    pseudo_label_stats,
    sinkhorn,
    suppression_weights,
)

# ------------------------------------------------------------------ suppressed loss


def test_suppression_weights_follow_beta_power() -> None:
    # w_c = beta^(1 - N_c / N_max): the most predicted class 1, an unpredicted one beta
    w = suppression_weights(torch.tensor([10.0, 5.0, 0.0]), beta=0.2)
    assert torch.allclose(w, torch.tensor([1.0, 0.2**0.5, 0.2]))


def test_suppression_weights_are_ones_without_counts() -> None:
    assert torch.equal(suppression_weights(torch.zeros(4), 0.2), torch.ones(4))


def test_suppressed_loss_is_weighted_one_minus_top_probability_over_classes() -> None:
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    w = torch.tensor([1.0, 0.5, 0.2])
    # sample 1: 1.0 * 0.3 / 3 = 0.1; sample 2: 0.2 * 0.2 / 3 = 0.01333; mean 0.056667
    assert float(suppressed_loss(probs, w, 3)) == pytest.approx((0.1 + 0.04 / 3) / 2)
    # it is mean_c |p - p~| with p~ = p with its argmax set to 1
    tilde = probs.clone()
    tilde[torch.arange(2), probs.argmax(1)] = 1.0
    direct = (w[probs.argmax(1)] * (probs - tilde).abs().mean(1)).mean()
    assert float(suppressed_loss(probs, w, 3)) == pytest.approx(float(direct))


# ------------------------------------------------------------------ ORCA terms


def test_margin_cross_entropy_raises_the_target_logit() -> None:
    logits = torch.tensor([[1.0, 2.0, 0.0]])
    target = torch.tensor([0])
    raised = torch.tensor([[1.0 + 5.0, 2.0, 0.0]])
    assert float(margin_cross_entropy(logits, target, 5.0)) == pytest.approx(
        float(F.cross_entropy(raised, target))
    )
    assert float(margin_cross_entropy(logits, target, 0.0)) == pytest.approx(
        float(F.cross_entropy(logits, target))
    )


def test_pair_partners_same_class_for_labelled_nearest_for_unlabelled() -> None:
    feats = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [1.0, 0.05]])
    y = torch.tensor([0, 0, 1, -1, -1])
    partner = pair_partners(feats, y, torch.Generator().manual_seed(0))
    assert partner[0] == 1 and partner[1] == 0  # the other labelled sample of class 0
    assert partner[2] == 2  # the only labelled sample of class 1 pairs with itself
    assert partner[3] == 2  # unlabelled: the most similar other sample
    assert partner[4] == 0


# ------------------------------------------------------------------ clustering


def test_sinkhorn_assignments_are_balanced_even_when_scores_are_not() -> None:
    scores = torch.zeros(100, 4)
    scores[:, 0] = 1.0  # every sample prefers cluster 0
    a = sinkhorn(scores, lam=25.0, iters=100)
    assert torch.allclose(a.sum(1), torch.ones(100), atol=1e-5)  # rows: one unit each
    assert torch.allclose(a.sum(0), torch.full((4,), 25.0), atol=0.5)  # columns: N / K


def test_local_kmeans_finds_separated_directions() -> None:
    gen = torch.Generator().manual_seed(0)
    centres = torch.eye(4, 8)
    bank = torch.cat([c + 0.05 * torch.randn(30, 8, generator=gen) for c in centres])
    found = local_kmeans(bank, 4, 5, torch.Generator().manual_seed(1))
    assert found.shape == (4, 8)
    assert torch.allclose(found.norm(dim=1), torch.ones(4), atol=1e-5)
    sim = found @ centres.T  # every true direction has a centroid close to it
    assert (sim.max(0).values > 0.95).all()


def test_global_clustering_returns_unit_rows_and_lowers_its_loss() -> None:
    gen = torch.Generator().manual_seed(0)
    z = F.normalize(torch.randn(40, 6, generator=gen), dim=1)
    start = F.normalize(torch.randn(3, 6, generator=gen), dim=1)
    _, first = global_clustering(start, z, steps=1)
    cg, mean_loss = global_clustering(start, z, steps=50)
    assert torch.allclose(cg.norm(dim=1), torch.ones(3), atol=1e-5)
    assert mean_loss < first


def test_alignment_moves_each_seen_class_centroid_to_its_head_row() -> None:
    e = np.eye(4)
    centroids = np.stack([e[3], e[1], e[2], e[0]])  # clusters in shuffled order
    means = np.zeros((4, 4))
    means[0] = e[1] + 0.1 * e[2]  # class 0's labelled features point along e1
    means[1] = e[0]  # class 1's along e0
    aligned = align_centroids(centroids, means, seen=[0, 1])
    assert np.array_equal(aligned[0], e[1])
    assert np.array_equal(aligned[1], e[0])
    # the rest keep index order: original rows 0 (e3) and 2 (e2)
    assert np.array_equal(aligned[2], e[3]) and np.array_equal(aligned[3], e[2])


def test_alignment_takes_the_next_best_when_the_best_is_taken() -> None:
    e = np.eye(3)
    centroids = np.stack([e[0], e[1], e[2]])
    means = np.stack([e[0], e[0] + 0.5 * e[2], np.zeros(3)])  # both seen classes like row 0
    aligned = align_centroids(centroids, means, seen=[0, 1])
    assert np.array_equal(aligned[0], e[0]) and np.array_equal(aligned[1], e[2])
    assert np.array_equal(aligned[2], e[1])


# ------------------------------------------------------------------ config and wire


def test_fedossl_needs_an_open_world_scenario(fast_cfg) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match=r"scenario\.open_world\.enabled"):
        fast_cfg("strategy=fedossl")  # refused at load, before any run directory exists
    cfg = fast_cfg("strategy=fedavg")
    cfg.strategy = FedoSSLConfig()
    cfg.scenario.open_world.enabled = True
    cfg.strategy.protocol = "x"
    with pytest.raises(ConfigError, match=r"strategy\.protocol: unknown 'x'"):
        validate_fedossl(cfg)


def test_registry_variants_switch_the_right_terms() -> None:
    from fedsim.algorithms.registry import algorithms

    REGISTRY = algorithms()

    public, with_ls, orca, no_calib = (
        REGISTRY[n].config() for n in ("fedossl", "fedossl_ls", "fedossl_orca", "fedossl_no_calib")
    )
    # the default is the public code's objective: L_S is commented out there
    assert public.suppress_weight == 0 and public.calibration and public.pseudo_labels
    assert with_ls.suppress_weight == 2.0 and with_ls.suppress_sign == -1.0
    assert with_ls.calibration and with_ls.pseudo_labels
    assert orca.suppress_weight == 0 and not orca.calibration and not orca.pseudo_labels
    assert no_calib.suppress_weight == 2.0 and not no_calib.calibration  # ORCA + L_S
    assert not no_calib.pseudo_labels
    names = {REGISTRY[n].config().name for n in REGISTRY if n.startswith("fedossl")}
    assert names == {"fedossl", "fedossl_ls", "fedossl_orca", "fedossl_no_calib"}
    assert {public.memory_scope, with_ls.memory_scope} == {"round"}


def _augmenter(recipe: str = "cifar", channels: int = 1) -> Augmenter:
    aug = build_augmenter(AugmentConfig(recipe=recipe), torch.zeros(channels), torch.ones(channels))
    assert aug is not None
    return aug


def _objective(  # type: ignore[no-untyped-def]
    server_round: int,
    memory: torch.Tensor | None = None,
    augmenter: Augmenter | None = None,
    aug_seed: int = 3,
):
    from fedsim.config import BackboneConfig
    from fedsim.models.backbones import NormedLinear, replace_head
    from fedsim.models.modelzoo import initial_model

    model = initial_model(BackboneConfig(name="cnn_digits", width=0.25), (1, 8, 8), 10, 0)
    replace_head(model, NormedLinear(model.feature_dim, 10))
    dim = model.feature_dim
    gen = torch.Generator().manual_seed(0)
    cg = F.normalize(torch.randn(10, dim, generator=gen), dim=1)
    obj = FedoSSLObjective(
        FedoSSLConfig(pseudo_threshold=1e-3),
        server_round,
        0.1,
        torch.ones(10),
        cg,
        torch.zeros(0, dim) if memory is None else memory,
        10,
        (0, 1, 2, 3, 4, 5),
        augmenter or _augmenter(),
        torch.Generator().manual_seed(aug_seed),
        gen,
    )
    return model, obj


def test_official_loss_schedule_calibration_from_round_6_pseudo_from_round_8() -> None:
    """The code's ``global_round > 4`` / ``> 6`` (0-based) are rounds 6 and 8 here (1-based)."""
    cfg = FedoSSLConfig()
    assert (cfg.calib_start_round, cfg.pseudo_start_round) == (6, 8)
    x = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    y = hide_labels(torch.arange(16) % 10, torch.arange(16) < 6)
    terms = {}
    for rnd in (5, 6, 7, 8):
        model, obj = _objective(rnd)
        obj(model, x, y)
        terms[rnd] = set(obj.parts)
    assert "calib" not in terms[5] and "calib" in terms[6]
    assert "pseudo" not in terms[7] and "pseudo" in terms[8]
    assert "suppress" not in terms[8]  # default: the public objective, no L_S


def test_memory_bank_holds_both_views_of_this_round_only() -> None:
    model, obj = _objective(2)
    dim = model.feature_dim
    x = torch.randn(12, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    y = hide_labels(torch.arange(12) % 10, torch.zeros(12, dtype=torch.bool))
    obj(model, x, y)
    obj(model, x, y)
    assert obj.memory.shape == (2 * 2 * 12, dim)  # two batches x two views
    assert torch.allclose(obj.memory.norm(dim=1), torch.ones(48), atol=1e-5)


# ------------------------------------------------------------------ two views


class CountingAugmenter(Augmenter):
    """The shared augmenter of a recipe (grey images, mean 0.5, std 0.25), counting calls."""

    def __init__(self, recipe: str) -> None:
        super().__init__(resolve(AugmentConfig(recipe=recipe)), torch.tensor([0.5]), GREY_STD)
        self.samples: list[tuple[int, torch.Generator]] = []
        self.applies = 0

    def sample(self, n: int, gen: torch.Generator) -> AugParams:
        self.samples.append((n, gen))
        return super().sample(n, gen)

    def apply(self, x: torch.Tensor, params: AugParams) -> torch.Tensor:
        self.applies += 1
        return super().apply(x, params)


GREY_STD = torch.tensor([0.25])
BLACK = -2.0  # (0 - 0.5) / 0.25: what the zero padding of a crop becomes


def test_the_two_views_are_two_sample_apply_calls_of_the_shared_augmenter() -> None:
    aug = CountingAugmenter("cifar")
    model, obj = _objective(2, augmenter=aug)
    x = torch.randn(12, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    y = hide_labels(torch.arange(12) % 10, torch.arange(12) < 6)
    obj(model, x, y)
    obj(model, x, y)
    assert [n for n, _ in aug.samples] == [12] * 4 and aug.applies == 4  # two per batch
    assert all(gen is obj.aug_gen for _, gen in aug.samples)  # the augmentation stream


def test_view_one_draws_first_then_view_two_from_the_augmentation_stream() -> None:
    aug = CountingAugmenter("cifar")
    _, obj = _objective(2, augmenter=aug, aug_seed=5)
    x = torch.arange(4 * 64, dtype=torch.float32).view(4, 1, 8, 8)
    views = obj.views(x)
    stream = torch.Generator().manual_seed(5)
    first = aug.apply(x, aug.sample(4, stream))
    second = aug.apply(x, aug.sample(4, stream))
    assert torch.equal(views, torch.cat([first, second]))
    assert not torch.equal(views[:4], views[4:])  # two draws, not one view twice


def test_the_recipe_decides_the_views_cifar_moves_pixels_fraug_digits_resamples() -> None:
    pixels = 0.1 + 0.8 * (torch.arange(8 * 64, dtype=torch.float32) + 0.5) / (8 * 64)
    x = ((pixels - 0.5) / 0.25).view(8, 1, 8, 8)  # distinct grey levels, none black
    for recipe, whole_pixels in (("cifar", True), ("fraug_digits", False)):
        _, obj = _objective(2, augmenter=CountingAugmenter(recipe))
        views = obj.views(x)
        assert views.shape == (16, 1, 8, 8)
        # pad-crop and flip only move pixels: a view holds its image's values and black
        moved = [
            set(views[v].unique().tolist()) <= set(x[v % 8].unique().tolist()) | {BLACK}
            for v in range(16)
        ]
        assert all(moved) if whole_pixels else not any(moved), recipe


def test_fedossl_has_no_augmentation_of_its_own(fast_cfg) -> None:  # type: ignore[no-untyped-def]
    import dataclasses

    import clients.fedossl as client

    assert not hasattr(client, "augment") and not hasattr(client, "_crop_padding")
    assert not {f.name for f in dataclasses.fields(FedoSSLConfig)} & {"hflip", "crop_padding"}
    with pytest.raises(ConfigError, match=r"strategy\.hflip: unknown key"):
        fast_cfg("strategy=fedossl", "scenario=digits_open_world", "strategy.hflip=false")


def test_fedossl_refuses_augmentation_that_changes_nothing(fast_cfg) -> None:  # type: ignore[no-untyped-def]
    refusal = r"train\.augment\.recipe: strategy fedossl_orca draws its two views from"
    with pytest.raises(ConfigError, match=refusal):
        fast_cfg("strategy=fedossl_orca", "scenario=digits_open_world", "train.augment.recipe=none")
    with pytest.raises(ConfigError, match=r"changes nothing here \(recipe 'cifar'\)"):
        fast_cfg(
            "strategy=fedossl",
            "scenario=digits_open_world",
            "train.augment.recipe=cifar",
            "train.augment.crop_padding=0",
            "train.augment.flip=0",
        )
    # the open-world scenarios name a recipe: the official views on CIFAR, no flip on digits
    assert fast_cfg("strategy=fedossl", "scenario=digits_open_world").scenario.augment == (
        "fraug_digits"
    )
    scenarios = Path(__file__).resolve().parents[1] / "scenarios"
    assert "\naugment: cifar\n" in (scenarios / "cifar10_open_world.yaml").read_text()
    assert "\naugment: fraug_digits\n" in (scenarios / "mnist_open_world.yaml").read_text()


def test_local_keys_running_statistics_and_a_linear_heads_bias() -> None:
    """``protocols.fedossl.local_keys``: the server's linear-head model never sends its
    bias; the clients' cosine head has none; batch-norm statistics stay local."""
    from clients.fedossl import FedoSSLClient
    from fedsim.config import BackboneConfig
    from fedsim.models.backbones import NormedLinear, bn_running_stat_keys, replace_head
    from fedsim.models.modelzoo import initial_model
    from protocols.fedossl import local_keys

    model = initial_model(BackboneConfig(name="cnn_digits", width=0.25), (1, 8, 8), 10, 0)
    stats = bn_running_stat_keys(model)
    assert len(stats) == 15  # five BN layers x three statistics
    assert local_keys(model) == stats | {"head.bias"}  # the server's reference model
    replace_head(model, NormedLinear(model.feature_dim, 10))
    assert local_keys(model) == stats  # the clients' cosine head: no bias
    assert FedoSSLClient.local_keys(model, None) == stats  # type: ignore[arg-type]


def test_the_round_trains_on_every_sample_and_only_the_views_augment(
    fast_cfg, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    from flwr.app import RecordDict

    from clients.fedossl import FedoSSLClient
    from fedsim.algorithms.client import client_env
    from fedsim.algorithms.payloads import TrainIns
    from fedsim.engine.context import context_for
    from fedsim.records import arrays_from_state

    cfg = fast_cfg(
        "strategy=fedossl_orca",
        "scenario=digits_open_world",
        "train.local_steps=3",
        "train.batch_size=16",
    )
    env = client_env(context_for(cfg))
    client = FedoSSLClient(env, 0, RecordDict())
    assert env.augmenter is not None
    draws: list[int] = []
    sample = env.augmenter.sample

    def counting(n: int, gen: torch.Generator) -> AugParams:
        draws.append(n)
        return sample(n, gen)

    monkeypatch.setattr(env.augmenter, "sample", counting)
    res = client.fit(TrainIns(arrays_from_state(env.init_state), 1))
    data = env.fed.client(0)
    assert data.labeled is not None and 0 < int(data.labeled.sum()) < len(data.y)
    assert res.num_examples == len(data.y)  # labelled and unlabelled samples
    assert res.metrics["labeled_fraction"] == pytest.approx(float(data.labeled.float().mean()))
    # the loss stage draws two views per batch; the loop augments nothing itself
    assert draws == [16] * 6 and res.metrics["steps"] == 3.0


def test_hidden_labels_are_negative_and_recoverable_for_measurement_only() -> None:
    y = torch.tensor([0, 3, 7, 9])
    hidden = hide_labels(y, torch.tensor([True, False, False, True]))
    assert hidden.tolist() == [0, -4, -8, 9]
    assert (-1 - hidden[1:3]).tolist() == [3, 7]


def test_pseudo_label_stats_hungarian_and_identity_on_seen() -> None:
    pseudo = np.array([0, 0, 1, 7, 7, 8])
    true = np.array([0, 0, 2, 9, 9, 9])
    st = pseudo_label_stats(pseudo, true, seen=range(6))
    # Hungarian: 0->0 (2), 7->9 (2), 1->2 (1); 8 has no class left -> 5 / 6
    assert st["acc"] == pytest.approx(5 / 6)
    assert st["acc_seen"] == pytest.approx(2 / 3)  # 1 is not 2 on the seen rows
    assert st["seen_share"] == pytest.approx(0.5)
    assert pseudo_label_stats(np.zeros(0), np.zeros(0), seen=range(6)) == {}


def test_a_short_fedossl_run_sends_centroids_and_keeps_local_state(
    fast_cfg,  # type: ignore[no-untyped-def]
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from fedsim.algorithms.client import LOCAL_KEY, OPTIM_KEY
    from fedsim.models.backbones import bn_running_stat_keys
    from fedsim.models.modelzoo import initial_model

    cfg = fast_cfg(
        "strategy=fedossl",
        "scenario=digits_open_world",
        "rounds=2",
        "strategy.calib_start_round=2",
        "strategy.pseudo_start_round=2",
        "strategy.global_steps=20",
        "strategy.memory_size=4096",
        "strategy.local_centroids=8",
        "train.batch_size=64",
        "train.local_epochs=1",
        "train.persist_optimizer=true",
        "train.momentum=0.9",
        "runtime.threads=1",
    )
    sampled: list[int] = []
    shared_sample = Augmenter.sample

    def counting_sample(self: Augmenter, n: int, gen: torch.Generator) -> AugParams:
        sampled.append(n)
        return shared_sample(self, n, gen)

    monkeypatch.setattr(Augmenter, "sample", counting_sample)
    grid = RecordingGrid(make_client_app(), cfg.scenario.num_clients, {CONFIG_KEY: to_json(cfg)})
    run_experiment(grid, cfg, tmp_path / "run")
    sent_train = [m for m in grid.sent if m.has_content() and GLOBAL_RECORD in m.content]
    assert sent_train, "round 2 must carry the global centroids"
    cg = sent_train[0].content[GLOBAL_RECORD]["centroids"].numpy()
    assert cg.shape[0] == 10 and np.allclose(np.linalg.norm(cg, axis=1), 1.0, atol=1e-4)
    ups = [r for r in grid.received if r.has_content() and LOCAL_RECORD in r.content]
    assert len(ups) == 2 * 5  # every client, every round
    local = ups[0].content[LOCAL_RECORD]
    assert local["local_centroids"].numpy().shape[0] == 8
    assert local["labeled_count"].numpy()[6:].sum() == 0  # no label of an unseen class
    # BN running statistics and the memory bank never travel
    stats = bn_running_stat_keys(initial_model(cfg.backbone, (1, 8, 8), 10, cfg.seed))
    wire = {
        k
        for m in grid.sent + grid.received
        if m.has_content()
        for r in m.content.array_records.values()
        for k in r
    }
    assert not (stats & wire) and "memory" not in wire
    state = grid.context(grid.node_map()[0]).state
    assert STATE_KEY in state.array_records and LOCAL_KEY in state.array_records
    # each client's SGD momentum is kept across rounds (the code keeps one optimizer each)
    assert any(k.endswith("momentum_buffer") for k in state.array_records[OPTIM_KEY])
    # the bank holds both views of this round's one epoch only, not last round's features
    from fedsim.data.federation import build_federation

    fed = build_federation(cfg.scenario, cfg.seed)
    n0 = len(fed.client(0).y)
    assert state.array_records[STATE_KEY]["memory"].numpy().shape[0] == 2 * n0
    # the shared augmenter made two views of every trained image and nothing else (the
    # loop does not augment the batch the loss receives); batches of one are dropped
    sizes = [len(fed.client(c).y) for c in range(5)]
    assert sum(sampled) == 2 * 2 * sum(n - (n % 64 == 1) for n in sizes)
    metrics = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1]
    for key in ("train/pseudo_passed", "train/pseudo_count", "fedossl/pseudo_passed"):
        assert f'"{key}"' in metrics
    for key in ("acc_seen", "acc_unseen", "acc_all", "acc_unseen_local", "acc_unseen_global"):
        assert f'"eval/{key}"' in metrics


def test_checkpoint_loading_strips_prefixes_and_renames_shortcut(tmp_path: Path) -> None:
    from fedsim.models.backbones import ResNet18
    from strategies.fedossl import load_checkpoint_arrays

    model = ResNet18((3, 8, 8), 10, width=0.125)
    arrays = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    key = "layer2.0.downsample.0.weight"
    saved = {
        "module.conv1.weight": torch.full_like(model.state_dict()["conv1.weight"], 0.5),
        "module." + key.replace("downsample", "shortcut"): torch.ones_like(model.state_dict()[key]),
        "module.linear.weight": torch.zeros(3, 3),  # ORCA's head: no match, ignored
    }
    path = tmp_path / "simclr.pth.tar"
    torch.save({"state_dict": saved}, path)
    loaded, count = load_checkpoint_arrays(str(path), arrays)
    assert count == 2
    assert np.all(loaded["conv1.weight"] == 0.5) and np.all(loaded[key] == 1.0)
    assert np.array_equal(loaded["layer1.0.conv1.weight"], arrays["layer1.0.conv1.weight"])
    torch.save({"other.weight": torch.zeros(2)}, path)
    with pytest.raises(ConfigError, match="no tensor"):
        load_checkpoint_arrays(str(path), arrays)
