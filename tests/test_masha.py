"""MASHA1 / MASHA2 (arXiv 2110.03313): the maths on hand numbers, the bilinear problem's
closed form, convergence through fedsim's round loop, byte accounting, the client/server
mirrors, the message-free replay, and the adversarial min-max operator."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import MessageType

from fedsim.algorithms.channels import IdentityChannel, RandKChannel, TopKChannel, make_channel
from fedsim.config import ProblemConfig
from protocols.masha_math import (
    anchor,
    error_feedback,
    half_step,
    masha1_update,
    masha2_update,
    replay,
)
from protocols.masha_problems import (
    AdversarialProblem,
    BilinearVI,
    make_bilinear,
    relative_distance,
)

SMALL = ("scenario=masha_bilinear", "scenario.num_clients=4", "scenario.problem.dim=10",
         "scenario.problem.scale=0.3")  # fmt: skip


def ident(z: np.ndarray) -> np.ndarray:
    return z


# ----------------------------------------------------------------------------- maths


def test_masha_steps_on_hand_numbers() -> None:
    z, w, fw, c = np.array([2.0]), np.array([4.0]), np.array([1.0]), np.array([0.5])
    zbar = anchor(z, w, tau=0.75)  # 0.75 * 2 + 0.25 * 4 = 2.5
    assert zbar[0] == 2.5
    assert half_step(zbar, fw, 0.1, ident)[0] == pytest.approx(2.4)  # 2.5 - 0.1 * 1
    assert masha1_update(zbar, fw, c, 0.1, ident)[0] == pytest.approx(2.35)  # 2.5 - 0.1*1.5
    assert masha2_update(zbar, fw, c, 0.1, ident)[0] == pytest.approx(1.9)  # 2.5 - 0.1 - 0.5


def test_error_feedback_keeps_what_topk_dropped() -> None:
    e = np.array([0.0, 0.5, 0.0])
    v = np.array([3.0, 0.25, -1.0])

    def top1(u: np.ndarray) -> np.ndarray:
        out = np.zeros_like(u)
        out[np.argmax(np.abs(u))] = u[np.argmax(np.abs(u))]
        return out

    c, e_new = error_feedback(e, v, top1)
    assert np.array_equal(c, [3.0, 0.0, 0.0])
    assert np.array_equal(e_new, [0.0, 0.75, -1.0])  # u - c, u = e + v
    assert np.array_equal(c + e_new, e + v)  # nothing is lost


# ----------------------------------------------------------------------------- problem


def test_bilinear_solution_zeroes_the_operator_and_lipschitz_is_the_jacobian_norm() -> None:
    problem = make_bilinear(ProblemConfig(dim=6, lam=0.5), 3, seed=1)
    z_star = problem.solution()
    assert np.linalg.norm(problem.full_operator(z_star)) < 1e-10
    # F is affine: F(z) - F(z') = J (z - z')
    rng = np.random.default_rng(0)
    z, z2 = rng.normal(size=12), rng.normal(size=12)
    J = problem.jacobian()
    assert np.allclose(problem.full_operator(z) - problem.full_operator(z2), J @ (z - z2))
    L, Lm = problem.lipschitz()
    assert pytest.approx(np.linalg.norm(J, 2)) == L
    assert Lm[2] == pytest.approx(np.linalg.norm(problem.jacobian(2), 2))
    # strong monotonicity mu = lam: <F(z) - F(z'), z - z'> = lam ||z - z'||^2
    assert (z - z2) @ (J @ (z - z2)) == pytest.approx(0.5 * np.sum((z - z2) ** 2))
    assert relative_distance(z_star, np.zeros(12), z_star) == 0.0


# ----------------------------------------------------------------------------- fedsim runs


def _run(cfg, tmp_path: Path, grid_class: type | None = None):
    from fedsim.engine.app import CONFIG_KEY, make_client_app
    from fedsim.engine.conf import to_json
    from fedsim.engine.runtime.inline import InlineGrid
    from fedsim.engine.server import run_experiment
    from fedsim.tracking.callbacks import Callback

    class Rows(Callback):
        def __init__(self) -> None:
            self.rows: list[dict[str, float]] = []

        def on_round(self, server_round: int, metrics: dict[str, float]) -> None:
            self.rows.append(dict(metrics))

    grid = (grid_class or InlineGrid)(
        make_client_app(), cfg.scenario.num_clients, {CONFIG_KEY: to_json(cfg)}
    )
    rows = Rows()
    run_experiment(grid, cfg, tmp_path / "run", callbacks=[rows])
    return grid, rows.rows


@pytest.mark.parametrize(
    ("strategy", "channel", "gamma_c"), [("masha1", "randk", 1.0), ("masha2", "topk", 2.0)]
)
def test_masha_converges_linearly_where_naive_compressed_eg_does_not(
    fast_cfg, tmp_path: Path, strategy: str, channel: str, gamma_c: float
) -> None:
    cfg = fast_cfg(*SMALL, f"strategy={strategy}", f"channel.up={channel}",
                   "channel.up.ratio=0.3", "rounds=150", f"strategy.gamma_c={gamma_c}")  # fmt: skip
    grid, rows = _run(cfg, tmp_path / strategy)
    rd = np.array([r["masha/rel_dist"] for r in rows])
    assert rd[-1] <= 1e-8
    # linear: the log-distance falls steadily (every 30 rounds by a factor > 10)
    assert all(rd[i + 30] < 0.1 * rd[i] for i in range(0, len(rd) - 30, 30) if rd[i] > 1e-12)
    # every device holds the same z, equal bit for bit to a server mirror of a round ago
    # (a device applies round r's broadcast when round r + 1's message arrives)
    from clients.masha import STATE_KEY
    from protocols.masha_task import server_problem

    problem = server_problem(cfg)
    zs = [
        grid.context(node).state.array_records[STATE_KEY]["vectors"].numpy()[0]
        for node in grid.node_map().values()
    ]
    assert all(np.array_equal(zs[0], z) for z in zs[1:])
    assert problem.metrics(zs[0], problem.z0())["masha/rel_dist"] in set(rd[-3:].tolist())

    naive = fast_cfg(*SMALL, "strategy=naive_eg", f"channel.up={channel}",
                     "channel.up.ratio=0.3", "rounds=150")  # fmt: skip
    _, nrows = _run(naive, tmp_path / "naive")
    nrd = np.array([r["masha/rel_dist"] for r in nrows])
    assert not nrd[-1] <= 1e-4  # stalls at a noise floor (randk) or a bias (topk), or diverges


def test_masha_bytes_per_round_match_the_protocol(fast_cfg, tmp_path: Path) -> None:
    cfg = fast_cfg(*SMALL, "strategy=masha1", "channel.up=randk", "channel.up.ratio=0.2",
                   "channel.down=topk", "channel.down.ratio=0.1", "rounds=12")  # fmt: skip
    _, rows = _run(cfg, tmp_path)
    d, M = 20, 4
    dense = 4 * d
    k_up, k_down = 4, 2  # ceil(0.2 * 20), ceil(0.1 * 20)
    # round 1 is the dense sync round: every device sends F_m(w^0), nothing comes down
    assert rows[0]["comm/bytes_up"] == M * dense and rows[0]["comm/bytes_down"] == 0
    # round 2: F(w^0) comes down dense, each device sends k values + an 8-byte seed
    assert rows[1]["comm/bytes_down"] == M * dense
    assert rows[1]["comm/bytes_up"] == M * (4 * k_up + 8)
    for prev, row in itertools.pairwise(rows):
        if prev["masha/sync_round"]:  # after a sync: dense F(w) to everyone
            assert row["comm/bytes_down"] == M * dense
        else:  # after a step: the TopK re-compressed broadcast, values + int32 indices
            assert row["comm/bytes_down"] == M * 8 * k_down
        up = M * dense if row["masha/sync_round"] else M * (4 * k_up + 8)
        assert row["comm/bytes_up"] == up
    assert rows[-1]["comm/bytes_up_total"] == sum(r["comm/bytes_up"] for r in rows)


def test_partial_participation_and_dropouts_reach_exactly_the_selected_devices(
    fast_cfg, tmp_path: Path
) -> None:
    """MASHA sees the participation the wrapper applies, as every algorithm does: each
    round, step or sync, messages exactly the selected devices that did not drop out, and a
    device that sat out a round catches up on the server's mirrors when next selected."""
    from fedsim.algorithms.payloads import TrainIns
    from fedsim.data.participation import ParticipationSampler
    from fedsim.engine.runtime.inline import InlineGrid
    from protocols.masha import RESYNC

    sent: dict[int, list[int]] = {}  # round -> devices messaged
    resynced: dict[int, list[int]] = {}  # round -> devices sent the mirrors

    class Recording(InlineGrid):
        def send_and_receive(self, messages, *, timeout=None):  # type: ignore[no-untyped-def]
            messages = list(messages)
            pid_of = {node: pid for pid, node in self.node_map().items()}
            for m in messages:
                if m.metadata.message_type == MessageType.TRAIN:
                    rnd, pid = (
                        TrainIns.from_record(m.content).server_round,
                        pid_of[m.metadata.dst_node_id],
                    )
                    sent.setdefault(rnd, []).append(pid)
                    if RESYNC in m.content.array_records:
                        resynced.setdefault(rnd, []).append(pid)
            return super().send_and_receive(messages, timeout=timeout)

    cfg = fast_cfg(*SMALL, "strategy=masha1", "channel.up=randk", "channel.up.ratio=0.2",
                   "scenario.participation.fraction=0.5", "scenario.participation.dropout=0.25",
                   "rounds=40", "strategy.gamma_c=0.5")  # fmt: skip
    grid, rows = _run(cfg, tmp_path, Recording)
    sampler = ParticipationSampler(cfg.scenario.participation, 4, cfg.seed)
    lagging: set[int] = set()  # who missed a broadcast, as the protocol says
    for rnd, row in enumerate(rows, 1):
        plan = sampler.plan(rnd)
        gone = set(plan.dropped.tolist()) | set(plan.late.tolist())
        expected = [p for p in plan.selected.tolist() if p not in gone]
        assert sorted(sent.get(rnd, [])) == sorted(expected), rnd
        assert sorted(resynced.get(rnd, [])) == sorted(set(expected) & lagging), rnd
        if not expected:
            continue  # nobody left: the wrapper skips the round
        lagging = set(range(4)) - set(expected)
        assert row["sys/aggregated_clients"] == len(expected)
        per_device = 4 * 20 if row["masha/sync_round"] else 4 * 4 + 8  # dense F_m(w), or RandK
        assert row["comm/bytes_up"] == len(expected) * per_device
    syncs = [r for r, row in enumerate(rows, 1) if row.get("masha/sync_round")]
    assert any(len(sent.get(r, [])) < 4 for r in syncs)  # sync rounds are sampled too
    assert sum(len(v) for v in resynced.values()) > 5  # and devices did catch up
    # the devices of the last round hold the server's z of the round before, bit for bit
    from clients.masha import STATE_KEY
    from protocols.masha_task import server_problem

    problem = server_problem(cfg)
    last = max(sent)
    for pid in sent[last]:
        state = grid.context(grid.node_map()[pid]).state
        z = state.array_records[STATE_KEY]["vectors"].numpy()[0]
        assert (
            problem.metrics(z, problem.z0())["masha/rel_dist"] == rows[last - 2]["masha/rel_dist"]
        )
    assert rows[-1]["masha/rel_dist"] < 0.5  # consistently: it still converges


def test_replay_reproduces_the_fedsim_run(fast_cfg, tmp_path: Path) -> None:
    from protocols.masha_task import server_problem

    for strategy, ch in (("masha2", "topk"), ("masha1", "randk")):
        cfg = fast_cfg(*SMALL, f"strategy={strategy}", f"channel.up={ch}",
                       "channel.up.ratio=0.2", f"channel.down={ch}", "channel.down.ratio=0.5",
                       "rounds=30", "strategy.gamma_c=4")  # fmt: skip
        _, rows = _run(cfg, tmp_path / strategy)
        problem = server_problem(cfg)
        assert isinstance(problem, BilinearVI)
        gamma, tau = rows[0]["masha/gamma"], rows[0]["masha/tau"]
        variant = "masha1" if strategy == "masha1" else "masha2"
        up, down = make_channel(cfg.channel.up), make_channel(cfg.channel.down)
        rep = replay(problem, variant, up, down, gamma, tau, 30, cfg.seed)
        for a, b in zip(rows, rep, strict=True):
            assert a["masha/rel_dist"] == b["masha/rel_dist"]
            assert a["comm/bytes_up_total"] == b["comm/bytes_up_total"]
            assert a["comm/bytes_down_total"] == b["comm/bytes_down_total"]


@pytest.mark.parametrize(
    ("strategy", "ch"),
    [("masha1", "randk"), pytest.param("masha2", "topk", marks=pytest.mark.slow)],
)
def test_done_means_commands_run_as_typed(tmp_path: Path, strategy: str, ch: str) -> None:
    from fedsim.cli import main

    # the command of the issue, through the CLI's own override handling
    rc = main(["run", f"strategy={strategy}", "scenario=masha_bilinear", f"channel.up={ch}",
               "channel.up.ratio=0.05", "rounds=3", "progress=false",
               f"output_dir={tmp_path}"])  # fmt: skip
    assert rc == 0
    run = tmp_path / "masha_bilinear" / strategy / "seed-0"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    # 5% of 200 = 10 values per device, plus an 8-byte seed (randk) or 10 int32 indices (topk)
    assert rows[1]["comm/bytes_up"] == 10 * (4 * 10 + (8 if ch == "randk" else 40))
    assert rows[-1]["masha/rel_dist"] < 1.0


# ----------------------------------------------------------------------------- vision


def test_adversarial_operator_signs_projection_and_same_batch() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    adv = AdversarialProblem(model, (1, 2, 2), epsilon=0.1)
    assert adv.layout.dim == 4 * 3 + 3 + 4
    z = np.concatenate([adv.z_from_model()[: adv.n_theta], np.full(4, 0.05)])
    x, y = torch.randn(5, 1, 2, 2), torch.tensor([0, 1, 2, 0, 1])
    F = adv.operator(z, x, y)
    # the maximising player's block is minus the gradient of the loss w.r.t. delta
    delta = torch.full((1, 2, 2), 0.05, requires_grad=True)
    loss = torch.nn.functional.cross_entropy(model(x + delta), y)
    (g,) = torch.autograd.grad(loss, [delta])
    assert np.allclose(F[adv.n_theta :], -g.reshape(-1).numpy(), atol=1e-6)
    # the prox projects delta onto the L-inf ball and leaves the weights alone
    far = z.copy()
    far[adv.n_theta :] = [0.5, -0.5, 0.05, 0.0]
    p = adv.prox(far)
    assert np.array_equal(p[adv.n_theta :], [0.1, -0.1, 0.05, 0.0])
    assert np.array_equal(p[: adv.n_theta], far[: adv.n_theta])


def test_identity_channels_are_lossless_for_masha_payloads() -> None:
    rng = np.random.default_rng(0)
    v = rng.normal(size=7)
    for ch in (IdentityChannel(), RandKChannel(1.0), TopKChannel(1.0)):
        assert np.allclose(ch.roundtrip(v.astype(np.float32), rng), v, atol=1e-6)


# ----------------------------------------------------------------------------- regimes


def _bilinear(M: int, **kw: float) -> object:
    return make_bilinear(ProblemConfig(dim=8, **kw), M, seed=3)


def test_similarity_knob_zero_gives_identical_matrices_and_rho_one() -> None:
    from protocols.masha_problems import similarity_stats

    p = _bilinear(5, similarity=0.0, condition=10.0)
    assert all(np.array_equal(p.A[0], p.A[m]) for m in range(5))  # type: ignore[attr-defined]
    st = similarity_stats(p)  # type: ignore[arg-type]
    assert st["L"] == pytest.approx(10.0)  # condition sets L / mu exactly (mu = lam = 1)
    assert st["rho"] == pytest.approx(1.0)
    # rho = mean L_m^2 / L^2 grows with s towards M (independent A_m at s = inf)
    rhos = [similarity_stats(_bilinear(5, similarity=s, condition=10.0))["rho"]  # type: ignore[arg-type]
            for s in (0.3, 1.0, 3.0, float("inf"))]  # fmt: skip
    assert 1.0 < rhos[0] < rhos[1] < rhos[2] < rhos[3]
    assert 2.5 < rhos[3] < 10.0  # about M = 5 (the mean of 5 independent A_m: ||Abar|| ~ 1/sqrt(M))
    for s in (0.3, float("inf")):
        q = _bilinear(5, similarity=s, condition=10.0)
        L, Lm = q.lipschitz()  # type: ignore[attr-defined]
        assert pytest.approx(10.0) == L and np.all(Lm >= 1.0)
        assert np.mean(Lm) + 1e-9 >= L  # ||mean A_m|| <= mean ||A_m||


def test_similarity_inf_is_the_spec_instance_draw_for_draw() -> None:
    from fedsim.seeding import derive_rng

    p = _bilinear(3, scale=0.5)  # defaults: similarity inf, condition 0
    rng = derive_rng(3, "problem/bilinear")
    assert np.array_equal(p.A, 0.5 * rng.normal(0.0, 1.0, size=(3, 8, 8)))  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("override", "needle"),
    [("scenario.problem.similarity=-1", "problem.similarity: must be >= 0 or inf"),
     ("scenario.problem.condition=0.5", "problem.condition: must be 0"),
     ("scenario.rounds=-3", "rounds: must be >= 0")],
)  # fmt: skip
def test_bad_problem_keys_are_one_line_errors(override: str, needle: str) -> None:
    from fedsim.engine.conf import compose
    from fedsim.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        compose(["scenario=masha_bilinear", "strategy=masha1", override])
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_scenario_rounds_is_the_default_and_the_command_line_wins() -> None:
    from fedsim.engine.conf import compose

    assert compose(["scenario=masha_bilinear", "strategy=eg"]).rounds == 1500
    assert compose(["scenario=masha_bilinear", "strategy=eg", "rounds=7"]).rounds == 7
    assert compose(["scenario=digits_iid"]).rounds == 20  # no rounds: key, the run default


def test_predicted_ratio_formula() -> None:
    from fedsim.config import ChannelSideConfig
    from protocols.masha_math import predicted_up_ratio

    up, dense = ChannelSideConfig(name="randk", ratio=0.25), ChannelSideConfig()
    # ideal-bytes form: sqrt(p + (1 - p) rho / M) when not capped; RandK sends 4k + 8 bytes
    D, p, M, rho = 200, 0.25, 100, 1.0
    bytes_ratio = (4 * 50 + 8 + 4 * p * D) / (8 * D * p)
    want = bytes_ratio * np.sqrt(p + (1 - p) * rho / M)
    assert predicted_up_ratio(up, dense, D, M, 100.0, 1.0, rho) == pytest.approx(want)
    # capped by L / mu: with L / mu = 1.5 the 1/p reference refreshes dominate
    capped = predicted_up_ratio(up, dense, D, M, 1.5, 1.0, rho)
    assert capped == pytest.approx(bytes_ratio * p * (1 / p) / 1.5)
    # independent devices (rho = M): break-even or worse; bidirectional RandK: worse still
    assert predicted_up_ratio(up, dense, D, M, 100.0, 1.0, M) >= 1.0
    assert predicted_up_ratio(up, up, D, M, 100.0, 1.0, rho) > predicted_up_ratio(
        up, dense, D, M, 100.0, 1.0, rho
    )


def test_sparse_downlink_is_lossless_and_cheaper_at_small_ratios(fast_cfg, tmp_path: Path) -> None:
    cfg = fast_cfg(*SMALL, "strategy=masha1", "channel.up=randk", "channel.up.ratio=0.05",
                   "rounds=20")  # fmt: skip
    _, rows = _run(cfg, tmp_path)
    M, dense = 4, 4 * 20
    after_step = [r for p, r in itertools.pairwise(rows) if not p["masha/sync_round"]]
    assert after_step
    for row in after_step:  # <= M k = 4 non-zeros: values + int32 indices, not 20 floats
        assert 0 < row["comm/bytes_down"] <= M * 8 * 4 < M * dense
    # lossless: the replay with a dense downlink decodes the same vectors (same trajectory)
    from protocols.masha_task import server_problem

    problem = server_problem(cfg)
    rep = replay(problem, "masha1", make_channel(cfg.channel.up), IdentityChannel(),
                 rows[0]["masha/gamma"], rows[0]["masha/tau"], 20, cfg.seed)  # fmt: skip
    for a, b in zip(rows, rep, strict=True):
        assert a["masha/rel_dist"] == b["masha/rel_dist"]
        assert a["comm/bytes_down_total"] == b["comm/bytes_down_total"]


def test_vectorised_simulation_agrees_with_the_replay(fast_cfg) -> None:
    from protocols.masha_math import default_gamma, default_tau, simulate
    from protocols.masha_task import server_problem

    for strategy, ch, bi in (("masha2", "topk", False), ("masha2", "topk", True),
                             ("eg", "identity", False), ("masha1", "randk", False)):  # fmt: skip
        ov = [*SMALL, f"strategy={strategy}", f"channel.up={ch}", "channel.up.ratio=0.2"]
        if bi:
            ov += [f"channel.down={ch}", "channel.down.ratio=0.2"]
        cfg = fast_cfg(*ov)
        problem = server_problem(cfg)
        variant = "masha2" if strategy == "masha2" else "masha1"
        tau = 0.0 if strategy == "eg" else default_tau(cfg)
        L, Lm = problem.lipschitz()  # type: ignore[misc]
        gamma = default_gamma(variant, cfg, tau, L, Lm, 1.0)
        up, down = make_channel(cfg.channel.up), make_channel(cfg.channel.down)
        rep = replay(problem, variant, up, down, gamma, tau, 3000, cfg.seed, stop=1e-6)
        sim = simulate(problem, variant, cfg.channel.up, cfg.channel.down, gamma, tau, 3000,
                       cfg.seed, stop=1e-6)  # fmt: skip
        assert rep[-1]["masha/rel_dist"] <= 1e-6 and sim[-1]["masha/rel_dist"] <= 1e-6
        if ch == "randk":  # independent masks: statistically, not bitwise, equal
            assert 0.7 < len(sim) / len(rep) < 1.4
        else:  # deterministic compressors: the same run up to float rounding
            assert len(sim) == len(rep)
            assert sim[-1]["comm/bytes_up_total"] == rep[-1]["comm/bytes_up_total"]
            assert sim[-1]["comm/bytes_down_total"] == rep[-1]["comm/bytes_down_total"]
            assert sim[-1]["masha/rel_dist"] == pytest.approx(rep[-1]["masha/rel_dist"], rel=1e-3)


def _readme_masha_commands() -> list[str]:
    readme = Path(__file__).resolve().parents[1] / "README.md"
    return [ln.strip() for ln in readme.read_text().splitlines()
            if ln.strip().startswith("fedsim run") and "masha_bilinear" in ln]  # fmt: skip


def test_readme_has_masha_commands() -> None:
    cmds = _readme_masha_commands()
    assert len(cmds) >= 3 and any("strategy=eg" in c for c in cmds)


@pytest.mark.parametrize("command", _readme_masha_commands())
def test_readme_masha_command_reaches_1e6_replayed(command: str) -> None:
    """Cheap: the command's configuration through the replay (checked against fedsim)."""
    from fedsim.engine.conf import compose
    from protocols.masha import VARIANTS
    from protocols.masha_math import default_tau, derived_gamma
    from protocols.masha_task import server_problem

    cfg = compose(command.split()[2:])
    variant = VARIANTS[cfg.strategy.name]
    problem = server_problem(cfg)
    tau = 0.0 if cfg.strategy.name == "eg" else default_tau(cfg)
    L, Lm = problem.lipschitz()  # type: ignore[misc]
    gamma = derived_gamma(variant, cfg, tau, L, Lm, cfg.strategy.gamma_c)  # type: ignore[attr-defined]
    up, down = make_channel(cfg.channel.up), make_channel(cfg.channel.down)
    rows = replay(problem, variant, up, down, gamma, tau, cfg.rounds, cfg.seed)
    assert min(r["masha/rel_dist"] for r in rows) <= 1e-6
    assert rows[-1]["masha/rel_dist"] <= 1e-6  # and it stays there to the last round


@pytest.mark.slow
@pytest.mark.parametrize("command", _readme_masha_commands())
def test_readme_masha_command_reaches_1e6_as_typed(command: str, tmp_path: Path) -> None:
    from fedsim.cli import main

    args = command.split()[1:]
    assert main([*args, "progress=false", f"output_dir={tmp_path}"]) == 0
    (run,) = list(tmp_path.glob("masha_bilinear/*/seed-0"))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["masha/rel_dist"] <= 1e-6
