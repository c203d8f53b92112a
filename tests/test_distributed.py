"""Training, sampling and scoring over 2 gloo processes give what one process gives.

tests/torchrun_worker.py runs the suite's one torchrun launch: 2 CPU processes (gloo over
loopback, one thread each) that run the training and sampling runs of
tests/distributed_worker.py, then the scoring runs of tests/distributed_eval_worker.py, while
this process runs the same code as the 1-process reference.
"""

import math
import os
import subprocess
import sys
from pathlib import Path

import distributed_eval_worker
import pytest
import torch
from distributed_eval_worker import KEEP, N_IMAGES
from distributed_worker import SHAPE, run, tiny_model

from bench import perf
from bench.errors import BenchError
from casdm import distributed
from casdm.errors import InputError
from casdm.schedule import Schedule

TESTS = Path(__file__).parent
UNET_ARCHS = ("ddpm", "cas-dm")


@pytest.fixture(scope="module")
def torchrun_runs(
    tmp_path_factory: pytest.TempPathFactory, seeded_results: Path
) -> tuple[list[dict], dict]:
    """(what each of the 2 ranks returned, {"train": ..., "eval": ...} of one process)."""
    out, cache = tmp_path_factory.mktemp("torchrun"), seeded_results / "cache"
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "GLOO_SOCKET_IFNAME": "lo",  # loopback only
        "PYTHONWARNINGS": "ignore",
    }
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc_per_node=2", str(TESTS / "torchrun_worker.py"), str(cache), str(out)]
    # Started first, it imports torch while this process computes the references.
    torchrun = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        single = {
            # Without the theta runs: test_train checks them in one process, on the same data.
            "train": run(tmp_path_factory.mktemp("single"), theta=False),
            "eval": distributed_eval_worker.run(cache, tmp_path_factory.mktemp("single_eval")),
        }
    finally:
        log, _ = torchrun.communicate(timeout=300)
    assert torchrun.returncode == 0, log
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]
    return ranks, single


@pytest.fixture(scope="module")
def runs(torchrun_runs) -> tuple[list[dict], dict]:
    """(what each rank's training and sampling runs returned, what one process's returned)."""
    ranks, single = torchrun_runs
    return [rank["train"] for rank in ranks], single["train"]


@pytest.fixture(scope="module")
def eval_runs(torchrun_runs) -> tuple[list[dict], dict]:
    """(what each rank's scoring runs returned, what one process's returned)."""
    ranks, single = torchrun_runs
    return [rank["eval"] for rank in ranks], single["eval"]


def assert_equal_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


@pytest.mark.slow
def test_both_ranks_end_with_bitwise_identical_weights_and_ema(runs):
    (rank0, rank1), _ = runs
    for arch, trained in rank0["train"].items():
        assert_equal_state(trained["model"], rank1["train"][arch]["model"])
        assert_equal_state(trained["ema"], rank1["train"][arch]["ema"])
    assert_equal_state(rank0["straight"], rank1["straight"])  # with dropout 0.1 too


@pytest.mark.slow
def test_two_process_weights_equal_one_process_with_the_same_global_batch_and_seed(runs):
    (rank0, _), single = runs
    for key in ("model", "ema"):
        got, want = rank0["train"]["pixel-linear"][key], single["train"]["pixel-linear"][key]
        for name in want:
            torch.testing.assert_close(got[name], want[name], atol=1e-6, rtol=0)
        # 4 AdamW steps at lr 1e-3 moved the weights (and the EMA, decay 0.5) far beyond it.
        init = tiny_model("pixel-linear").state_dict()
        assert max((want[n] - init[n]).abs().max() for n in init) > 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("arch", UNET_ARCHS)
def test_two_process_unets_predict_what_the_one_process_unets_predict(runs, arch):
    # UNet weights are compared through their predictions: a conv bias ahead of a GroupNorm has
    # a zero gradient up to rounding, which Adam turns into steps of up to lr either way.
    (rank0, _), single = runs
    g = torch.Generator().manual_seed(0)
    x_t = torch.randn((4, *SHAPE), generator=g)
    t = torch.tensor([0, 20, 40, 60])
    for key in ("model", "ema"):
        got, want = tiny_model(arch).eval(), tiny_model(arch).eval()
        got.load_state_dict(rank0["train"][arch][key])
        want.load_state_dict(single["train"][arch][key])
        with torch.no_grad():
            for a, b in zip(got(x_t, t), want(x_t, t), strict=True):
                torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        assert not torch.equal(want(x_t, t).eps, tiny_model(arch).eval()(x_t, t).eps)


@pytest.mark.slow
def test_logged_loss_and_terms_are_the_global_batch_means_and_only_rank_0_gets_callbacks(runs):
    (rank0, rank1), single = runs
    for arch, want in single["train"].items():
        for rank in (rank0, rank1):
            history = rank["train"][arch]["history"]
            assert [r["step"] for r in history] == [r["step"] for r in want["history"]] == [2, 4]
            for got, ref in zip(history, want["history"], strict=True):
                assert got.keys() == ref.keys()
                for key in ref.keys() - {"images_per_s"}:
                    assert got[key] == pytest.approx(ref[key], rel=1e-5), (arch, key)
        assert rank0["train"][arch]["callback"] == rank0["train"][arch]["history"]
        assert rank1["train"][arch]["callback"] == []


@pytest.mark.slow
def test_cas_dm_theta_and_its_ema_are_bitwise_independent_of_the_metric_under_2_processes(runs):
    (rank0, rank1), _ = runs
    for got in (rank0["theta"], rank1["theta"]):
        reference = got["none"]
        for variant in ("l2-w0", "l2-w10", "lpips-random"):
            assert_equal_state(got[variant]["theta"], reference["theta"])
            assert_equal_state(got[variant]["ema"], reference["ema"])
        # Clipping was active: phi's and theta's gradient norms exceeded grad_clip = 1.0.
        history = got["l2-w10"]["history"]
        assert max(r["grad_norm/phi"] for r in history) > 1.0
        assert max(r["grad_norm/theta"] for r in history) > 1.0


@pytest.mark.slow
def test_distributed_resume_is_bitwise_the_uninterrupted_distributed_run(runs):
    (rank0, rank1), single = runs
    # Rank 0 wrote every rank's global RNG state (dropout), and each rank took its own back.
    assert rank0["checkpoint_rank_rng"] == 2 and single["checkpoint_rank_rng"] == 0
    for rank in (rank0, rank1):
        assert_equal_state(rank["resumed"], rank["straight"])


@pytest.mark.slow
def test_two_ranks_together_sample_exactly_the_single_process_ddim_set(runs):
    (rank0, rank1), single = runs
    for key, n in [("ddim-7", 7), ("ddim-1", 1)]:  # shards of 3 and 4; of 0 and 1
        assert rank0["samples"][key].shape == (n, *SHAPE)
        assert torch.equal(rank0["samples"][key], single["samples"][key])
        assert torch.equal(rank1["samples"][key], single["samples"][key])
    # Each rank reports its own shard's progress (batches of 1, 2 and 1).
    assert rank0["progress"] == [[[1, 3], [2, 3], [3, 3]], [[2, 3], [3, 3]], []]
    assert rank1["progress"] == [[[1, 4], [2, 4], [3, 4], [4, 4]], [[2, 4], [4, 4]], [[1, 1]]]


@pytest.mark.slow
def test_two_ranks_with_a_stochastic_sampler_return_the_same_n_distinct_samples(runs):
    (rank0, rank1), single = runs
    samples = rank0["samples"]["ddpm-7"]  # [7, C, H, W]
    assert samples.shape == (7, *SHAPE) and torch.equal(samples, rank1["samples"]["ddpm-7"])
    assert samples.abs().max() <= 1
    assert len({tuple(s.flatten().tolist()) for s in samples}) == 7
    # Rank 0's noise stream is the single process's, so its first batch is the same; after
    # that the streams are consumed differently and the sets differ (both are valid draws).
    assert torch.equal(samples[:2], single["samples"]["ddpm-7"][:2])
    assert not torch.allclose(samples[2:], single["samples"]["ddpm-7"][2:])


@pytest.mark.slow
def test_a_global_batch_not_divisible_by_the_processes_is_a_config_error(runs):
    (rank0, rank1), single = runs
    message = (
        "train.batch_size: is the global batch, split evenly over the 2 processes of this "
        "torchrun, so it must be divisible by 2; got 5: use a multiple of 2"
    )
    assert rank0["odd_batch"] == rank1["odd_batch"] == message
    assert single["odd_batch"] == "trained"


@pytest.mark.parametrize("n", [0, 1, 7, 8, 100])
@pytest.mark.parametrize("world", [1, 2, 3, 8])
def test_shards_are_contiguous_balanced_and_cover_every_index_once(n, world):
    shards = [distributed.shard(n, r, world) for r in range(world)]
    assert [i for s in shards for i in s] == list(range(n))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_without_a_process_group_the_helpers_are_the_identity(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    dist = distributed.init_from_env("cpu")
    assert (dist.rank, dist.world_size, dist.is_main, dist.device) == (
        0,
        1,
        True,
        torch.device("cpu"),
    )
    assert not torch.distributed.is_initialized()
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    x = torch.arange(6.0).view(3, 2)
    assert distributed.all_gather_cat(x) is x and distributed.all_reduce_sum(x) is x
    assert distributed.all_gather_object({"a": 1}) == [{"a": 1}]
    assert distributed.broadcast_object("b") == "b"
    model = Schedule.named("linear", 30)
    assert distributed.data_parallel(model, torch.device("cpu")) is model
    distributed.barrier()


def test_rank_seed_keeps_rank_0_and_gives_other_ranks_and_steps_their_own_streams():
    assert distributed.rank_seed(3, 0) == 3
    seeds = {distributed.rank_seed(3, r, s) for r in range(4) for s in (0, 10)}
    assert len(seeds) == 8 and all(0 <= s < 2**64 for s in seeds)


def test_torchrun_on_a_device_without_a_backend_or_gpu_is_refused_before_joining(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(InputError, match=r"distributed runs support device 'cuda' .* got mps"):
        distributed.init_from_env("mps")
    gpus = torch.cuda.device_count()
    monkeypatch.setenv("LOCAL_RANK", str(gpus))
    with pytest.raises(
        InputError, match=rf"LOCAL_RANK={gpus} but this machine has {gpus} GPU\(s\)"
    ):
        distributed.init_from_env("cuda")
    assert not torch.distributed.is_initialized()


@pytest.mark.slow
def test_throughput_worker_runs_as_bench_perf_in_a_fresh_process_and_reports_its_row():
    spec = {"device": "cpu", "steps": 1, "batch_size": 4, "shape": [1, 8, 8]}
    spec.update(architecture="cas-dm", threads=1, seed=0)
    row = perf._launch_throughput(spec, 1, timeout=240)
    assert row.keys() == {"benchmark", "processes", "architecture", "images_per_s", "ms_per_step"}
    assert (row["benchmark"], row["processes"], row["architecture"]) == (
        "distributed-train",
        1,
        "cas-dm",
    )
    assert row["images_per_s"] == pytest.approx(4 / (row["ms_per_step"] / 1000))


def test_distributed_benchmark_runs_one_then_n_processes_and_takes_the_ratio_of_their_rows(
    monkeypatch,
):
    # The launches themselves are tested above (1 process) and timed in the report (torchrun).
    launched = []

    def launch(spec, nproc, timeout):
        launched.append((spec, nproc))
        return {"benchmark": "distributed-train", "processes": nproc, "images_per_s": 10 * nproc}

    monkeypatch.setattr(perf, "_launch_throughput", launch)
    one, three, ratio = perf.distributed_benchmark(3, steps=2, batch_size=6, threads=2)
    assert [n for _, n in launched] == [1, 3]
    assert (
        launched[0][0]
        == launched[1][0]
        == {
            "device": "cpu",
            "steps": 2,
            "batch_size": 6,
            "shape": [1, 16, 16],
            "architecture": "ddpm",
            "threads": 2,
            "seed": 0,
        }
    )
    common = {"device": "cpu", "batch_size": 6, "image": "1x16x16", "threads_per_process": 2}
    assert one == {**launch({}, 1, 0), **common} and three == {**launch({}, 3, 0), **common}
    assert ratio == {
        "benchmark": "ratio",
        "name": "3-process / 1-process train throughput",
        "value": 3.0,
        **common,
    }


@pytest.mark.parametrize(
    ("kwargs", "bad"),
    [({"nproc": 1}, "nproc=1"), ({"batch_size": 5}, "batch_size=5"), ({"steps": 0}, "steps=0")],
)
def test_distributed_benchmark_refuses_bad_arguments_before_starting_processes(kwargs, bad):
    with pytest.raises(BenchError, match=rf"needs nproc >= 2, steps >= 1.*{bad}"):
        perf.distributed_benchmark(**kwargs)


# Scoring (tests/distributed_eval_worker.py), with the digits classifier the session's
# `seeded_results` fixture trained.


@pytest.mark.slow
def test_two_ranks_score_n_images_with_the_one_process_scores(eval_runs):
    (rank0, rank1), single = eval_runs
    want = single["scores"]
    assert rank0["scores"] == rank1["scores"]  # rank 0's numbers, sent to rank 1
    assert rank0["scores"].keys() == want.keys()
    for key, value in want.items():
        assert math.isfinite(value), key
        assert rank0["scores"][key] == pytest.approx(value, rel=1e-6, abs=1e-9), key
    assert want["fid"] > 0.1  # blurred digits: a distance that rounding alone cannot explain


@pytest.mark.slow
def test_leaving_the_process_group_stops_its_threads_on_every_rank(torchrun_runs):
    """Rank 0 scores alone, and importing torchvision for KID imports torch._dynamo: done after
    the group was joined, that kept the group, and its threads, alive past
    destroy_process_group, to abort the process now and then at exit when one of them released
    a collective's tensors during interpreter shutdown."""
    ranks, _ = torchrun_runs
    for rank in ranks:
        threads = rank["threads_after_shutdown"]
        assert threads and not [name for name in threads if "gloo" in name], threads


@pytest.mark.slow
def test_the_reference_pass_split_over_ranks_equals_the_one_process_pass(eval_runs):
    (rank0, rank1), single = eval_runs
    for rank in (rank0, rank1):
        for name, want in single["reference"].items():
            got = rank["reference"][name]
            assert got.shape == want.shape, name
            # float32 features of the same image in another batch differ in the last bits.
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert single["reference"]["features"].shape[0] == 101  # every reference image, once
    # The second call: rank 0 read the cache file and sent its contents to rank 1.
    for rank in (rank0, rank1):
        for name, want in rank0["reference"].items():
            assert torch.equal(rank["cached_reference"][name], want), name
    assert (
        len(rank0["reference_files"]) == 1 and rank0["reference_files"] == single["reference_files"]
    )


@pytest.mark.slow
def test_kept_features_are_the_first_k_overall_and_progress_counts_each_shard(eval_runs):
    (rank0, rank1), single = eval_runs
    assert single["kept"].shape == (KEEP, rank0["kept"].shape[1])
    for rank in (rank0, rank1):
        torch.testing.assert_close(rank["kept"], single["kept"], rtol=1e-6, atol=1e-6)
    assert single["progress"] == [[4, 23], [8, 23], [12, 23], [16, 23], [20, 23], [23, 23]]
    assert rank0["progress"] == [[4, 11], [8, 11], [11, 11]]
    assert rank1["progress"] == [[4, 12], [8, 12], [12, 12]]
    assert N_IMAGES == 23


@pytest.mark.slow
def test_errors_reach_every_rank_with_their_message(eval_runs):
    (rank0, rank1), single = eval_runs
    too_few = (
        "BenchError: scoring needs at least 4 images (2 Inception Score split(s), and 3 nearest "
        "neighbours for precision/recall), got 3"
    )
    assert rank0["errors"][0] == rank1["errors"][0] == single["errors"][0] == too_few
    # A failure on rank 0 in main_only / main_first: raised there, and on rank 1 as well.
    for i in (1, 2):
        assert rank0["errors"][i] == single["errors"][i] == "BenchError: rank 0 cannot do this"
        assert rank1["errors"][i] == "InputError: on rank 0: BenchError: rank 0 cannot do this"
    assert rank0["main_only"] == rank1["main_only"] == single["main_only"] == "from rank 0"
