"""Scoring over 2 gloo processes (torchrun) gives the scores one process gives on all N images.

The runs compared live in tests/distributed_eval_worker.py: torchrun starts it as 2 CPU
processes while this process runs the same code as the 1-process reference, all with the digits
classifier the session's `seeded_results` fixture trained.
"""

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from distributed_eval_worker import KEEP, N_IMAGES, run

TESTS = Path(__file__).parent


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, seeded_results: Path) -> tuple[list, dict]:
    """(what each of the 2 ranks returned, what one process returned)."""
    out = tmp_path_factory.mktemp("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    env["PYTHONWARNINGS"] = "ignore"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    command += [str(TESTS / "distributed_eval_worker.py"), str(seeded_results / "cache"), str(out)]
    torchrun = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        single = run(seeded_results / "cache", tmp_path_factory.mktemp("single"))
    finally:
        log, _ = torchrun.communicate(timeout=300)
    assert torchrun.returncode == 0, log
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]
    return ranks, single


@pytest.mark.slow
def test_two_ranks_score_n_images_with_the_one_process_scores(runs):
    (rank0, rank1), single = runs
    want = single["scores"]
    assert rank0["scores"] == rank1["scores"]  # rank 0's numbers, sent to rank 1
    assert rank0["scores"].keys() == want.keys()
    for key, value in want.items():
        assert math.isfinite(value), key
        assert rank0["scores"][key] == pytest.approx(value, rel=1e-6, abs=1e-9), key
    assert want["fid"] > 0.1  # blurred digits: a distance that rounding alone cannot explain


@pytest.mark.slow
def test_leaving_the_process_group_stops_its_threads_on_every_rank(runs):
    """Rank 0 scores alone, and importing torchvision for KID imports torch._dynamo: done after
    the group was joined, that kept the group, and its threads, alive past
    destroy_process_group, to abort the process now and then at exit when one of them released
    a collective's tensors during interpreter shutdown."""
    (rank0, rank1), _ = runs
    for rank in (rank0, rank1):
        threads = rank["threads_after_shutdown"]
        assert threads and not [name for name in threads if "gloo" in name], threads


@pytest.mark.slow
def test_the_reference_pass_split_over_ranks_equals_the_one_process_pass(runs):
    (rank0, rank1), single = runs
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
def test_kept_features_are_the_first_k_overall_and_progress_counts_each_shard(runs):
    (rank0, rank1), single = runs
    assert single["kept"].shape == (KEEP, rank0["kept"].shape[1])
    for rank in (rank0, rank1):
        torch.testing.assert_close(rank["kept"], single["kept"], rtol=1e-6, atol=1e-6)
    assert single["progress"] == [[4, 23], [8, 23], [12, 23], [16, 23], [20, 23], [23, 23]]
    assert rank0["progress"] == [[4, 11], [8, 11], [11, 11]]
    assert rank1["progress"] == [[4, 12], [8, 12], [12, 12]]
    assert N_IMAGES == 23


@pytest.mark.slow
def test_errors_reach_every_rank_with_their_message(runs):
    (rank0, rank1), single = runs
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
