"""The Optuna runner: every grid cell exactly once, results on the trials, resume, failures."""

import threading
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import optuna
import pytest
from mlflow import MlflowClient
from PIL import Image

from bench.claims import Storage, _encoded, config_digest
from bench.cli import main
from bench.errors import BenchError
from bench.evaluation.formulas import PRECISION_RECALL_PROTOCOL
from bench.results import describe_storage, load_results, open_storage, storage_file
from bench.runner import run_study
from bench.study import load_study
from casdm.architectures import build_model, count_parameters
from casdm.errors import DataError, MissingWeightsError
from casdm.schedule import Schedule

SCORE_KEYS = {"fid", "sfid", "is_mean", "is_std", "kid", "precision", "recall"}
STUDIES = Path(__file__).parent / "studies"
TINY_CELLS = [("ddpm", "none"), ("ddpm", "l2"), ("cas-dm", "none"), ("cas-dm", "l2")]


def _optuna_study(name: str, url: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=open_storage(url, create=False))


@pytest.fixture(scope="module")
def tiny_run(module_workspace):
    """The tiny 2x2 study run once in a fresh workspace (temporary SQLite + MLflow stores)."""
    study = load_study("tiny")
    return SimpleNamespace(
        root=module_workspace.root, study=study, summary=run_study(study, quiet=True)
    )


def test_tiny_study_completes_every_cell_exactly_once(tiny_run):
    summary = tiny_run.summary
    assert summary.created and summary.failed == 0 and summary.done == 4
    trials = _optuna_study("tiny", summary.storage).get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4
    cells = sorted((t.params["architecture.name"], t.params["metric.name"]) for t in trials)
    assert cells == sorted(TINY_CELLS)
    assert summary.storage == f"sqlite:///{Path('results').as_posix()}/optuna.db"


def test_the_objective_is_named_by_its_score_for_optuna_dashboard(tiny_run):
    assert _optuna_study("tiny", tiny_run.summary.storage).metric_names == ["fid"]


def test_each_trial_stores_objective_scores_and_costs(tiny_run):
    study = tiny_run.study
    summary = tiny_run.summary
    for trial in _optuna_study("tiny", summary.storage).get_trials():
        attrs = trial.user_attrs
        assert set(attrs["scores"]) == SCORE_KEYS
        assert trial.value == attrs["scores"]["fid"]
        assert attrs["cell"] == f"{trial.params['architecture.name']} {trial.params['metric.name']}"
        assert attrs["params"] == trial.params
        assert attrs["wall_s"] > 0 and attrs["images_per_s"] > 0 and attrs["peak_memory_mb"] > 0
        assert attrs["peak_memory_kind"] == "cpu_process_max_rss"
        config = study.config(attrs["params"])
        model = build_model(config.architecture, config.model, Schedule.named("linear", 50), 1, 8)
        assert attrs["num_params"] == count_parameters(model)


def test_study_records_meta_and_held_out_reference_row(tiny_run):
    summary = tiny_run.summary
    attrs = _optuna_study("tiny", summary.storage).user_attrs
    assert attrs["total_cells"] == 4 and attrs["cells_enqueued"] == 4
    meta = attrs["meta"]
    assert meta == {
        "dataset": "digits",
        "resolution": 8,
        "evaluator": meta["evaluator"],
        "num_samples": 20,
        "sampler": "ddim",
        "steps": 3,
        "sampler_caption": "η = 0",
        "clip_x0": True,
        "random_weights": False,
        "caveats": [],
        "protocols": {
            "is_mean": "ADM evaluator: consecutive chunks of 5,000 samples",
            "is_std": "ADM evaluator: consecutive chunks of 5,000 samples",
            "precision": PRECISION_RECALL_PROTOCOL,
            "recall": PRECISION_RECALL_PROTOCOL,
        },
        "overrides": [],  # the --set values, for the report's commands
    }
    assert "classifier" in meta["evaluator"]
    assert set(attrs["reference_scores"]) == SCORE_KEYS
    # Real held-out digits are far closer to the reference than 4-step models' samples.
    fids = [t.value for t in _optuna_study("tiny", summary.storage).get_trials()]
    assert attrs["reference_scores"]["fid"] < min(fids)


def test_each_trial_is_an_mlflow_run_with_params_curves_metrics_and_grid(tiny_run):
    root = tiny_run.root
    summary = tiny_run.summary
    client = MlflowClient(summary.tracking_uri)
    experiment = client.get_experiment_by_name("tiny")
    runs = client.search_runs([experiment.experiment_id])
    trials = {
        t.user_attrs["mlflow_run_id"]: t
        for t in _optuna_study("tiny", summary.storage).get_trials()
    }
    assert sorted(r.info.run_id for r in runs) == sorted(trials)
    for run in runs:
        trial = trials[run.info.run_id]
        assert run.info.status == "FINISHED"
        assert run.info.run_name == trial.user_attrs["cell"]
        assert run.data.tags["optuna.trial_number"] == str(trial.number)
        assert run.data.tags["optuna.study"] == "tiny"
        assert run.data.tags["evaluator"] == trial.user_attrs["evaluator"]
        assert run.data.params["architecture.name"] == trial.params["architecture.name"]
        assert run.data.params["train.steps"] == "4"
        assert run.data.params["model.channel_mults"] == "[1]"
        for key in SCORE_KEYS:
            assert run.data.metrics[key] == pytest.approx(trial.user_attrs["scores"][key])
        assert run.data.metrics["num_params"] == trial.user_attrs["num_params"]
        assert run.data.metrics["peak_memory_cpu_process_max_rss_mb"] > 0
        curve = client.get_metric_history(run.info.run_id, "train/loss")
        assert [m.step for m in curve] == [2, 4]
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert artifacts == {"samples.png", "config.json"}
        local = Path(client.download_artifacts(run.info.run_id, "samples.png", str(root)))
        assert local.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        # Logged enlarged by a whole factor (nearest): the trial folder's grid, pixel for pixel.
        workdir = Path(trial.user_attrs["workdir"])
        with Image.open(local) as big, Image.open(workdir / "samples.png") as small:
            factor = big.width // small.width
            assert min(big.size) >= 512 and big.size == (
                small.width * factor,
                small.height * factor,
            )
            assert np.array_equal(np.asarray(big)[::factor, ::factor], np.asarray(small))


def test_experiment_opens_as_model_training_on_the_studys_columns(tiny_run):
    import json

    from bench.commands.ui import runs_page_query

    client = MlflowClient(tiny_run.summary.tracking_uri)
    experiment = client.get_experiment_by_name("tiny")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    view = json.loads(experiment.tags["mlflow.sharedViewState.bench"])
    assert view["name"] == "bench" and isinstance(view["createdAt"], int)
    state = json.loads(view["state"])
    assert state["selectedColumns"] == [
        "attributes.`Run Name`",
        "params.`architecture.name`",
        "params.`metric.name`",
        "metrics.`fid`",
        "metrics.`is_mean`",
    ]
    assert state["orderByKey"] == "metrics.`fid`" and state["orderByAsc"] is True
    assert runs_page_query(experiment) == "workflowType=machine_learning&viewStateShareKey=bench"


def test_plot_and_report_read_the_run_and_log_to_one_study_run(tiny_run, capsys):
    from html.parser import HTMLParser

    root = tiny_run.root
    assert main(["plot", "tiny", "--format", "png"]) == 0
    figures = root / "results" / "tiny" / "figures"
    assert {p.name for p in figures.iterdir()} >= {"bars-fid.png", "curves.png", "samples.png"}
    assert main(["report", "tiny"]) == 0
    report = (root / "results" / "tiny" / "report.html").read_text()
    images = []

    class Images(HTMLParser):
        def handle_starttag(self, tag, attrs):
            if tag == "img":
                images.append(dict(attrs)["src"])

    Images().feed(report)
    assert "curves" in report and all(src.startswith("data:image/png;base64,") for src in images)
    client = MlflowClient(tiny_run.summary.tracking_uri)
    experiment = client.get_experiment_by_name("tiny")
    summaries = client.search_runs(
        [experiment.experiment_id], filter_string="tags.`bench.role` = 'study'"
    )
    assert len(summaries) == 1  # plot and report share it
    run_id = summaries[0].info.run_id
    assert {a.path for a in client.list_artifacts(run_id)} == {"figures", "report.html"}
    logged = {a.path for a in client.list_artifacts(run_id, "figures")}
    assert "figures/curves.png" in logged


def test_trial_folder_holds_config_checkpoint_grid_and_adm_npz(tiny_run):
    root = tiny_run.root
    summary = tiny_run.summary
    for trial in _optuna_study("tiny", summary.storage).get_trials():
        workdir = root / trial.user_attrs["workdir"]
        assert workdir.parent == root / "results" / "tiny" / "trials"
        assert {p.name for p in workdir.iterdir()} == {
            "config.json",
            "checkpoint.pt",
            "samples.png",
            "samples.npz",
            "samples.json",
        }
        arr = np.load(workdir / "samples.npz")["arr_0"]
        assert arr.shape == (20, 8, 8, 1) and arr.dtype == np.uint8


def test_load_results_gives_one_row_per_complete_trial(tiny_run):
    study = tiny_run.study
    summary = tiny_run.summary
    results = load_results(study, summary.storage)
    assert results.total == 4 and results.states == Counter({"COMPLETE": 4})
    frame = results.frame
    assert len(frame) == 4
    assert {"trial", "cell", "architecture.name", "metric.name", "fid", "is_mean"} <= set(
        frame.columns
    )
    assert sorted(zip(frame["architecture.name"], frame["metric.name"], strict=True)) == sorted(
        TINY_CELLS
    )
    attrs = _optuna_study("tiny", summary.storage).user_attrs
    assert results.reference == attrs["reference_scores"]
    assert results.meta == attrs["meta"]


def test_table_is_built_from_the_finished_study(tiny_run, capsys):
    from bench.cli import main
    from bench.tables import build_table, render

    study = tiny_run.study
    table = build_table(load_results(study, tiny_run.summary.storage), study)
    markdown = render(table, "markdown")
    assert "cas-dm" in markdown and "ddpm" in markdown and "partial" not in markdown
    assert main(["table", "tiny"]) == 0
    written = tiny_run.root / "results" / "tiny"
    assert (written / "table.md").read_text() == markdown
    assert (written / "table.tex").is_file() and (written / "table.csv").is_file()


def test_running_a_finished_study_again_runs_nothing(tiny_run):
    root = tiny_run.root
    study = tiny_run.study
    summary = tiny_run.summary
    again = run_study(study, quiet=True, storage=summary.storage, results=root / "results")
    assert not again.created and again.trials == [] and again.done == 4
    assert len(_optuna_study("tiny", summary.storage).get_trials()) == 4


# --- claiming cells --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_concurrent_workers_claim_every_cell_exactly_once(workspace, kind):
    study = load_study("claims")
    url = (
        "sqlite:///claims.db" if kind == "sqlite" else "journal:///" + str(workspace.root / "j.log")
    )
    cells = study.cells()
    creator = Storage(url, study, seed=0)
    assert creator.created
    assert creator.enqueue_missing(cells, study) == (16, [])
    claimed: list[int] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            store = Storage(url, study, seed=0)
            while (got := store.claim(cells)) is not None:
                trial, index = got
                claimed.append(index)
                store.optuna.tell(trial, 0.0)
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(claimed) == list(range(16))
    states = Counter(t.state.name for t in creator.trials())
    assert states == Counter({"COMPLETE": 16})


def test_a_cell_enqueued_twice_runs_once_and_the_copy_is_pruned(workspace):
    study = load_study("claims")
    cells = study.cells()[:3]
    store = Storage("sqlite:///dup.db", study, seed=0)
    store.enqueue_missing(cells, study)
    store.optuna.enqueue_trial(_encoded(cells[1]))  # trial 3 duplicates trial 1's cell
    order = []
    while (got := store.claim(cells)) is not None:
        order.append(got[1])
        store.optuna.tell(got[0], 1.0)
    assert order == [0, 1, 2]
    duplicate = store.optuna.get_trials()[3]
    assert duplicate.state.name == "PRUNED" and duplicate.user_attrs["duplicate_of"] == 1


@pytest.mark.parametrize(
    ("failure", "retry_failed", "enqueued"),
    [
        ("lost", False, True),
        ("interrupted", False, True),
        ("error", False, False),
        (None, False, False),  # a FAIL without a kind (another tool's) counts as an error
        ("error", True, True),
    ],
)
def test_a_joining_worker_reenqueues_failed_cells_by_their_failure(
    workspace, failure, retry_failed, enqueued
):
    study = load_study("claims")
    cells = study.cells()[:3]
    store = Storage("sqlite:///retry.db", study, seed=0)
    store.enqueue_missing(cells, study)
    trial, index = store.claim(cells)
    if failure is not None:
        trial.set_user_attr("failure", failure)
    store.optuna.tell(trial, state=optuna.trial.TrialState.FAIL)
    joiner = Storage("sqlite:///retry.db", study, seed=0)
    assert not joiner.created
    count, held_back = joiner.enqueue_missing(cells, study, retry_failed=retry_failed)
    assert (count, held_back) == ((1, []) if enqueued else (0, [cells[index]]))
    waiting = [t.system_attrs["fixed_params"] for t in joiner.trials(("WAITING",))]
    assert waiting == [_encoded(cells[1]), _encoded(cells[2])] + [_encoded(cells[index])] * enqueued
    if enqueued:
        assert joiner.trials(("WAITING",))[-1].user_attrs["retry_of"] == trial.number
    assert joiner.enqueue_missing(cells, study, retry_failed=retry_failed)[0] == 0


def test_config_digest_ignores_device_but_not_other_keys():
    path = str(STUDIES / "tiny.toml")
    assert config_digest(load_study(path)) == config_digest(load_study(path, ["device=auto"]))
    assert config_digest(load_study(path)) != config_digest(load_study(path, ["train.steps=5"]))


# --- whole runs -------------------------------------------------------------------------------


ONE_CELL = ["architecture.name=ddpm", "metric.name=none"]


def test_joining_a_study_created_from_another_config_is_refused(workspace):
    run_study(load_study("tiny", ONE_CELL), quiet=True)
    with pytest.raises(BenchError, match="created from a different configuration"):
        run_study(load_study("tiny", [*ONE_CELL, "train.steps=5"]), quiet=True)
    # The dry run says so too, instead of "0 pending, nothing was run".
    changed = load_study("tiny", [*ONE_CELL, "train.steps=5"])
    with pytest.raises(BenchError) as err:
        run_study(changed, dry_run=True)
    message = str(err.value)
    assert message.startswith("dry run: `bench run` would stop before any trial: study 'tiny'")
    assert "it was run with --set ['architecture.name=ddpm', 'metric.name=none']" in message
    assert run_study(load_study("tiny", ONE_CELL), dry_run=True).plan.cells == []


def test_a_failing_trial_is_marked_failed_and_rerun_with_retry_failed(
    workspace, monkeypatch, capsys
):
    import bench.trial

    study = load_study("tiny", ["architecture.name=ddpm"])
    real = bench.trial.run_trial

    def broken(config, workdir, **kwargs):
        if config.metric.name == "l2":
            raise RuntimeError("simulated crash")
        return real(config, workdir, **kwargs)

    monkeypatch.setattr(bench.trial, "run_trial", broken)
    first = run_study(study, quiet=True)
    assert [(t.cell, t.state) for t in first.trials] == [
        ("ddpm none", "COMPLETE"),
        ("ddpm l2", "FAIL"),
    ]
    failed = _optuna_study("tiny", first.storage).get_trials()[1]
    assert failed.state.name == "FAIL" and "simulated crash" in failed.user_attrs["error"]
    client = MlflowClient(first.tracking_uri)
    run = client.get_run(failed.user_attrs["mlflow_run_id"])
    assert run.info.status == "FAILED" and "simulated crash" in run.data.tags["error"]
    capsys.readouterr()
    assert main(["show", "tiny"]) == 0
    shown = capsys.readouterr().out
    assert "FAIL (error)" in shown
    assert "trial 1 (ddpm l2) failed: RuntimeError: simulated crash" in shown
    assert "--retry-failed" in shown

    assert failed.user_attrs["failure"] == "error"

    monkeypatch.setattr(bench.trial, "run_trial", real)
    second = run_study(study, quiet=True)
    assert second.trials == [] and second.held_back == ["ddpm l2"]
    third = run_study(study, quiet=True, retry_failed=True)
    assert [(t.cell, t.state) for t in third.trials] == [("ddpm l2", "COMPLETE")]
    states = [t.state.name for t in _optuna_study("tiny", first.storage).get_trials()]
    assert states == ["COMPLETE", "FAIL", "COMPLETE"]


def test_bad_input_inside_a_trial_stops_the_study(workspace, monkeypatch):
    import bench.trial

    def missing_data(config, workdir, **kwargs):
        raise DataError("the dataset folder is empty")

    monkeypatch.setattr(bench.trial, "run_trial", missing_data)
    with pytest.raises(DataError, match="folder is empty"):
        run_study(load_study("tiny"), quiet=True)
    states = Counter(t.state.name for t in _optuna_study("tiny", workspace.storage).get_trials())
    assert states == Counter({"FAIL": 1, "WAITING": 3})


def test_missing_pretrained_lpips_weights_stop_before_any_database(workspace):
    study = load_study("tiny", ["metric.name=lpips"])
    with pytest.raises(MissingWeightsError) as err:
        run_study(study, quiet=True)
    assert "alexnet-owt-7be5be79.pth" in str(err.value)
    assert "bench weights fetch alexnet" in str(err.value)
    assert not (workspace.results / "optuna.db").exists()
    assert MlflowClient(workspace.tracking_uri).get_experiment_by_name("tiny") is None


def test_dry_run_lists_pending_cells_with_costs_and_creates_nothing(workspace):
    study = load_study("tiny")
    summary = run_study(study, dry_run=True)
    plan = summary.plan
    assert [c.cell for c in plan.cells] == ["ddpm none", "ddpm l2", "cas-dm none", "cas-dm l2"]
    for cost in plan.cells:
        assert (cost.train_images, cost.samples, cost.sampling_evals) == (4 * 8, 20, 20 * 3)
        assert cost.seconds > 0
    assert plan.device == "cpu"
    assert plan.device_hours == sum(c.seconds for c in plan.cells) / 3600 > 0
    assert not (workspace.results / "optuna.db").exists()
    assert MlflowClient(workspace.tracking_uri).get_experiment_by_name("tiny") is None

    run_study(study, quiet=True, n_trials=1)
    assert [c.cell for c in run_study(study, dry_run=True).plan.cells] == [
        "ddpm l2",
        "cas-dm none",
        "cas-dm l2",
    ]


def test_search_study_asks_tpe_for_n_trials_within_the_ranges(workspace):
    study = load_study("search")
    first = run_study(study, quiet=True, n_trials=1)
    assert len(first.trials) == 1
    rest = run_study(study, quiet=True)
    assert len(rest.trials) == 1 and rest.done == 2
    trials = _optuna_study("search", first.storage).get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    for trial in trials:
        assert 1e-4 <= trial.params["train.lr"] <= 1e-3
        assert trial.user_attrs["params"] == {"train.lr": trial.params["train.lr"]}
    assert _optuna_study("search", first.storage).user_attrs["total_cells"] == 2


# --- storage URLs -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "kind", "path"),
    [
        ("sqlite:///results/optuna.db", "sqlite", Path("results/optuna.db")),
        ("sqlite:////abs/optuna.db", "sqlite", Path("/abs/optuna.db")),
        ("journal:///abs/study.log", "journal", Path("/abs/study.log")),
        ("journal://rel/study.log", "journal", Path("rel/study.log")),
        ("shared/study.log", "journal", Path("shared/study.log")),
        ("postgresql+psycopg2://u:pw@host/db", "rdb", None),
    ],
)
def test_storage_urls_select_the_backend(url, kind, path):
    assert storage_file(url) == (kind, path)


def test_storage_descriptions_never_show_a_password():
    assert describe_storage("postgresql+psycopg2://u:secret@host/db") == (
        "database postgresql+psycopg2://u:***@host/db"
    )
    assert describe_storage("sqlite:///results/optuna.db") == "sqlite file results/optuna.db"


def test_a_storage_that_is_not_a_url_is_rejected_with_the_forms_allowed():
    with pytest.raises(BenchError, match=r"not a storage URL; use sqlite:///PATH.db, journal:///"):
        storage_file("results/optuna.db")


def test_reading_a_missing_storage_creates_no_file(workspace):
    with pytest.raises(BenchError, match=r"no Optuna storage at nothing\.db"):
        load_results(load_study("tiny"), "sqlite:///nothing.db")
    assert not Path("nothing.db").exists()


def test_a_process_checks_each_databases_schema_version_once(tmp_path, monkeypatch):
    from optuna.storages._rdb.storage import _VersionManager

    checked: list[str] = []
    check = _VersionManager.check_table_schema_compatibility

    def counted(manager):
        checked.append(manager.url)
        check(manager)

    monkeypatch.setattr(_VersionManager, "check_table_schema_compatibility", counted)
    first, second = (f"sqlite:///{tmp_path / name}.db" for name in ("first", "second"))
    for index, url in enumerate((first, second, first, second)):
        storage = open_storage(url, create=True)
        storage.create_new_study([optuna.study.StudyDirection.MINIMIZE], f"study{index}")
        assert len(open_storage(url, create=False).get_all_studies()) == 1 + index // 2
    assert checked == [first, second]


# --- progress -----------------------------------------------------------------------------------


def test_rich_progress_shows_the_study_the_trial_and_its_stages(capsys, monkeypatch):
    from bench.progress import make_progress

    monkeypatch.setenv("COLUMNS", "160")
    with make_progress(quiet=False) as progress:
        progress.begin_study("tiny", total=4, done=1)
        progress.begin_trial("ddpm none", train_steps=4)
        progress.train({"step": 2, "loss": 0.5, "lr": 1e-4, "images_per_s": 123.4})
        progress.task("sampling")(10, 20)
        progress.log("scoring held-out real data")
    err = capsys.readouterr().err
    for text in ("study tiny", "1/4", "train ddpm none", "2/4", "loss 0.5000  123 img/s"):
        assert text in err
    assert "sampling" in err and "10/20" in err and "scoring held-out real data" in err


def test_quiet_progress_prints_nothing(capsys):
    from bench.progress import make_progress

    with make_progress(quiet=True) as progress:
        progress.begin_study("tiny", total=4, done=0)
        progress.begin_trial("ddpm none", train_steps=4)
        progress.train({"step": 2, "loss": 0.5, "images_per_s": 1.0})
        progress.task("sampling")(1, 2)
        progress.log("hidden")
        progress.end_trial()
    assert capsys.readouterr() == ("", "")


def test_a_trial_trains_the_same_weights_whatever_the_process_drew_before(tmp_path):
    import torch

    from bench.trial import train_run

    study = load_study(str(STUDIES / "tiny.toml"), ["metric.name=l2"])
    config = study.config(study.cells()[-1])  # cas-dm with L2: two networks
    torch.manual_seed(1)
    first, _ = train_run(config, tmp_path / "first")
    torch.rand(1000)  # a process that scored something, or trained another cell, first
    second, _ = train_run(config, tmp_path / "second")
    for key, value in first.ema.state_dict().items():
        assert torch.equal(value, second.ema.state_dict()[key]), key


def test_every_trial_and_the_real_data_row_record_the_studys_one_evaluator_build(tiny_run):
    summary = tiny_run.summary
    optuna_study = _optuna_study("tiny", summary.storage)
    (published,) = optuna_study.user_attrs["evaluator_builds"].values()
    build = {k: published[k] for k in ("evaluator", "weights_sha256", "reference_sha256")}
    assert optuna_study.user_attrs["reference_evaluator_build"] == build
    client = MlflowClient(summary.tracking_uri)
    for trial in optuna_study.get_trials():
        assert trial.user_attrs["evaluator_build"] == build
        tags = client.get_run(trial.user_attrs["mlflow_run_id"]).data.tags
        assert tags["evaluator.weights_sha256"] == build["weights_sha256"]
        assert tags["evaluator.reference_sha256"] == build["reference_sha256"]
        assert tags["protocol.is_mean"] == "ADM evaluator: consecutive chunks of 5,000 samples"
    # The build's files (the trained classifier, the reference statistics) are in MLflow.
    assert sorted(p.split("/")[0] for p in published["files"]) == ["classifier", "reference"]
    artifacts = client.list_artifacts(published["mlflow_run_id"], "evaluator")
    assert sorted(Path(a.path).name for a in artifacts) == ["classifier", "reference"]


def test_a_worker_with_another_evaluator_build_adopts_the_published_one(tiny_run, tmp_path):
    # "Another machine": its own cache holds a classifier whose weights differ in the last
    # bits (as one trained on another CPU would); it must score with the study's build.
    import shutil

    import torch

    from bench.trial import Scorer

    summary, study = tiny_run.summary, tiny_run.study
    optuna_study = _optuna_study("tiny", summary.storage)
    (published,) = optuna_study.user_attrs["evaluator_builds"].values()
    other = tmp_path / "other"
    shutil.copytree(
        tiny_run.root / "results" / "cache" / "classifier", other / "cache" / "classifier"
    )
    (classifier,) = (other / "cache" / "classifier").glob("*.pt")
    state = torch.load(classifier, weights_only=True)
    first = next(iter(state["state_dict"]))
    state["state_dict"][first] = torch.nextafter(state["state_dict"][first], torch.tensor(1.0))
    torch.save(state, classifier)
    config = study.config(study.cells()[0])
    scorer = Scorer(other / "cache", torch.device("cpu"))
    assert scorer.build(config)["weights_sha256"] != published["weights_sha256"]

    joined = run_study(
        study,
        storage=summary.storage,
        tracking_uri=summary.tracking_uri,
        results=other,
        quiet=True,
    )
    assert not joined.created
    adopted = Scorer(other / "cache", torch.device("cpu")).build(config)
    assert adopted == {k: published[k] for k in adopted}


def test_bench_table_refuses_scores_of_different_evaluator_builds_naming_the_trials(
    tiny_run, capsys
):
    import dataclasses

    from bench.results import check_one_evaluator_build

    summary = tiny_run.summary
    results = load_results(tiny_run.study, summary.storage)
    check_one_evaluator_build(results)  # one build: fine
    builds = dict(results.evaluator_builds)
    assert set(builds) == {"the real-data row", *(f"trial {n}" for n in range(4))}
    builds["trial 2"] = {**builds["trial 2"], "weights_sha256": "e" * 64}
    builds["trial 3"] = None  # recorded no build
    with pytest.raises(BenchError) as err:
        check_one_evaluator_build(dataclasses.replace(results, evaluator_builds=builds))
    message = str(err.value)
    assert "different evaluator builds" in message
    assert f"weights {'e' * 12}" in message and "trial 2" in message
    assert "unrecorded: trial 3" in message

    # The command: exit 2, naming the odd source; nothing is written.
    optuna_study = _optuna_study("tiny", summary.storage)
    build = optuna_study.user_attrs["reference_evaluator_build"]
    optuna_study.set_user_attr("reference_evaluator_build", {**build, "reference_sha256": "f" * 64})
    out = tiny_run.root / "refused"
    try:
        code = main(["table", "tiny", "--storage", summary.storage, "--out", str(out)])
        assert code == 2 and not out.exists()
        assert f"reference {'f' * 12}: the real-data row" in capsys.readouterr().err
    finally:
        optuna_study.set_user_attr("reference_evaluator_build", build)
    assert main(["table", "tiny", "--storage", summary.storage, "--out", str(out)]) == 0
