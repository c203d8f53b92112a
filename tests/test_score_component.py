"""Adding a score touches one module: this one registers "pool_norm" (the mean norm of the
samples' pool features, higher better, 3 decimals) and it flows through scoring, its bootstrap,
a study's objective and table, Markdown and CSV, with no other file edited."""

import io
import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from bench.evaluation import score
from bench.evaluation.bootstrap import resample_indices
from bench.evaluation.context import ScoringContext
from bench.evaluation.evaluator import Evaluator, Features
from bench.evaluation.reference import Reference
from bench.evaluation.scores import Score
from bench.results import Results
from bench.study import load_study
from bench.tables import build_table, render
from casdm.components import PluginError, register, registry
from casdm.data import from_uint8


def mean_pool_norm(ctx: ScoringContext) -> float:
    """The score's compute function: reads the samples only through the context."""
    return float(np.linalg.norm(ctx.features("pool").astype(np.float64), axis=1).mean())


POOL_NORM = Score(
    name="pool_norm",
    target=f"{__name__}:mean_pool_norm",
    display="Pool norm",
    direction="maximize",
    decimals=3,
    bootstrap=True,
    summary="mean Euclidean norm of the samples' pool features",
)


@pytest.fixture
def pool_norm():
    """POOL_NORM registered for one test (other tests see the shipped scores only)."""
    register(POOL_NORM)
    yield POOL_NORM
    del registry("score")._components[POOL_NORM.name]  # the registry has no unregister


class Projection(Evaluator):
    """pool, spatial, logits = fixed random projections of the 8x8 pixels."""

    def __init__(self):
        generator = torch.Generator().manual_seed(0)
        net = nn.Module()
        for name, dim in (("pool", 6), ("spatial", 5), ("logits", 4)):
            net.register_buffer(name, torch.randn(64, dim, generator=generator) / 8)
        super().__init__(
            net,
            name="projection",
            title="projection",
            weights_hash="projection-0",
            protocol="projection",
            dims=(6, 5, 4),
            channels=(1,),
            device=torch.device("cpu"),
        )

    def _features(self, images: torch.Tensor) -> Features:
        x = from_uint8(images).flatten(1)
        return Features(x @ self.network.pool, x @ self.network.spatial, x @ self.network.logits)


def _reference(evaluator: Projection, images: torch.Tensor) -> Reference:
    pool, spatial, _ = (f.double().numpy() for f in evaluator.features(images))
    return Reference(
        pool.mean(0),
        np.cov(pool, rowvar=False),
        spatial.mean(0),
        np.cov(spatial, rowvar=False),
        None,  # statistics only: KID, precision, recall are NaN
        None,
        {"evaluator": evaluator.name, "weights_hash": evaluator.weights_hash},
    )


def test_a_new_score_is_scored_bootstrapped_and_tabled(pool_norm, tmp_path):
    generator = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (80, 1, 8, 8), dtype=torch.uint8, generator=generator)
    real = torch.randint(0, 200, (200, 1, 8, 8), dtype=torch.uint8, generator=generator)
    evaluator = Projection()
    scores = score(images, evaluator, _reference(evaluator, real), batch_size=32, bootstrap=10)

    pool = evaluator.features(images).pool.double().numpy()
    norms = np.linalg.norm(pool, axis=1)
    # score() computed the features in batches of 32, this call in one of 80: the float32
    # products over 64 pixels may be summed in other orders (about U sqrt(64) of their size,
    # within 5 of that, U = 2^-24), and a norm, or a mean of norms, moves relatively by no
    # more; the rest is float64. Measured: equal.
    rtol = 5 * 2.0**-24 * math.sqrt(64)
    assert scores["pool_norm"] == pytest.approx(norms.mean(), rel=rtol, abs=0)
    # Each draw, a mean of 80 norms with independent errors, moves by <= rtol mean / sqrt(80);
    # a standard deviation of the draws by at most as much (times sqrt(n / (n - 1))).
    draws = [norms[index].mean() for index in resample_indices(len(images), 10)]
    se = np.std(draws, ddof=1)
    se_error = math.sqrt(10 / 9) * rtol * norms.mean() / math.sqrt(len(images))
    assert scores["bootstrap.pool_norm.se"] == pytest.approx(se, rel=0, abs=se_error)
    assert np.isnan(scores["kid"]) and "bootstrap.kid.se" not in scores

    path = tmp_path / "norm.toml"
    path.write_text(
        'description = "a new score"\nobjective = { score = "pool_norm" }\n'
        '[base.data]\ndataset = "digits"\nresolution = 8\n'
        "[base.model]\nchannel_mults = [1, 2]\nattention_resolutions = []\n"
        '[grid]\n"architecture.name" = ["ddpm", "cas-dm"]\n'
        '[table]\nrows = ["architecture.name"]\nscores = ["fid", "pool_norm"]\n'
    )
    study = load_study(str(path))
    assert (study.objective_score, study.direction) == ("pool_norm", "maximize")
    rows = [
        {"trial": 0, "cell": "ddpm", "architecture.name": "ddpm", "fid": 9.0, "pool_norm": 1.23456,
         "bootstrap.pool_norm.se": 0.01},
        {"trial": 1, "cell": "cas-dm", "architecture.name": "cas-dm", "fid": 8.0,
         "pool_norm": 1.5, "bootstrap.pool_norm.se": 0.02},
    ]  # fmt: skip
    results = Results(
        frame=pd.DataFrame(rows),
        reference={"fid": 0.5, "pool_norm": 2.0},
        meta={},
        total=2,
        states={"COMPLETE": 2},
        trials=pd.DataFrame(rows),
    )
    table = build_table(results, study)
    markdown = render(table, "markdown")
    assert "Pool norm ↑" in markdown
    assert "| ddpm | 9.00 | 1.235 ± 0.020 |" in markdown  # 3 decimals, ±1.96 bootstrap SE
    assert "**1.500 ± 0.039**" in markdown  # higher is better: the best is bold
    frame = pd.read_csv(io.StringIO(render(table, "csv")))
    norm = frame[frame["score"] == "pool_norm"].set_index("row")
    # The CSV holds repr() of the floats, which pandas reads back to the same floats (these
    # short decimals exactly); a cell of one trial has that trial's value as its mean.
    assert norm.loc["ddpm", "mean"] == 1.23456
    assert norm.loc["ddpm", "bootstrap_se"] == 0.01
    assert norm.loc["Real data (held-out)", "mean"] == 2.0
    assert bool(norm.loc["cas-dm", "best"]) and not bool(norm.loc["ddpm", "best"])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"name": "Pool-Norm"}, "a score name is lowercase letters"),
        ({"direction": "up"}, "direction must be 'minimize', 'maximize' or None"),
        ({"decimals": -1}, "decimals must be 0..12"),
        ({"scale": 1024}, "scale must be 1, 10, 100"),
        ({"target": "no_colon"}, "target must be 'module:attribute'"),
    ],
)
def test_a_malformed_score_is_refused_with_what_is_allowed(change, message):
    fields = {
        "name": "pool_norm",
        "target": f"{__name__}:mean_pool_norm",
        "display": "Pool norm",
        **change,
    }
    with pytest.raises(PluginError, match=message):
        Score(**fields)


def test_spatial_features_are_kept_only_for_a_bootstrap(monkeypatch):
    """sFID's bootstrap needs every sample's spatial features; without a bootstrap they are not
    kept (N x S floats saved), and no bootstrap key is returned."""
    import bench.evaluation.scoring as scoring

    kept = []
    collect = scoring.collect

    def spy(*args, **kwargs):
        stats = collect(*args, **kwargs)
        kept.append(len(stats.spatial_features))
        return stats

    monkeypatch.setattr(scoring, "collect", spy)
    generator = torch.Generator().manual_seed(2)
    images = torch.randint(0, 256, (40, 1, 8, 8), dtype=torch.uint8, generator=generator)
    evaluator = Projection()
    reference = _reference(evaluator, images.flip(0))
    plain = score(images, evaluator, reference, batch_size=16, bootstrap=0)
    resampled = score(images, evaluator, reference, batch_size=16, bootstrap=5)
    assert kept == [0, 3]  # 3 batches of spatial features kept, only with the bootstrap
    assert not any(k.startswith("bootstrap.") for k in plain)
    assert {k for k in resampled if k.startswith("bootstrap.")} == {
        "bootstrap.fid.se",
        "bootstrap.sfid.se",
        "bootstrap.is_mean.se",
        "bootstrap.resamples",
    }
    # The scores themselves come from the same statistics, bootstrap or not: equal.
    assert {k: resampled[k] for k in plain} == pytest.approx(plain, rel=0, abs=0, nan_ok=True)
