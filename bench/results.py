"""Where a study's results live (its Optuna storage) and reading them back as one table.

Storage URLs (`--storage`):
- `sqlite:///PATH` (default `sqlite:///results/optuna.db`): one machine; concurrent `bench run`
  processes on it are serialised by a lock file next to the database (bench.claims).
- `journal:///ABSOLUTE/PATH.log`, `journal://RELATIVE/PATH.log`, or any path ending in `.log`:
  Optuna's JournalStorage on an append-only file; works on NFS, so many machines can share it.
- any other SQLAlchemy URL, e.g. `postgresql+psycopg2://user:pw@host/db` (`pip install
  'casdm-bench[postgres]'`): many machines, row locks in the server.
"""

import dataclasses
import time
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench import record_cache
from bench.costs import COSTS, trial_cost
from bench.errors import BenchError

if TYPE_CHECKING:
    import optuna
    import pandas

    from bench.study import Study

DEFAULT_STORAGE = "sqlite:///results/optuna.db"
# Seconds a SQLite writer waits for another process's lock before "database is locked".
SQLITE_TIMEOUT_S = 60
# Heartbeats let another `bench run` take over the trials of a lost worker (bench.leases).
HEARTBEAT_INTERVAL_S = 60
HEARTBEAT_GRACE_S = 300
# Seconds a worker retries opening a database server whose schema another worker is creating.
SCHEMA_RACE_S = 30
# Database URLs whose schema version this process has checked: Optuna's check reads every
# alembic revision script (about 35 ms), and a `bench run` opens its storage several times.
_SCHEMA_CHECKED: set[str] = set()

# Trial user_attrs copied into every row of Results.frame next to the params and the scores.
TRIAL_COLUMNS = ("wall_s", "images_per_s", "peak_memory_mb", "num_params")
# Where each COMPLETE trial's files and MLflow run are (figures read samples.npz and curves).
RUN_COLUMNS = ("workdir", "mlflow_run_id", "peak_memory_kind")
# Results.frame holds each bench.costs.COSTS key as the column "cost.<key>" (None if unknown).
COST_PREFIX = "cost."


def storage_url_for(results: Path) -> str:
    """The default Optuna storage of a results folder: `sqlite:///<results>/optuna.db`."""
    return f"sqlite:///{results.as_posix()}/optuna.db"


def storage_file(url: str) -> tuple[str, Path | None]:
    """The kind of a storage URL ("sqlite", "journal", "rdb") and its local file, if any."""
    if url.startswith("journal://"):
        return "journal", Path(url.removeprefix("journal://"))
    if "://" not in url and url.endswith(".log"):
        return "journal", Path(url)
    if url.startswith("sqlite:///"):
        return "sqlite", Path(url.removeprefix("sqlite:///"))
    if "://" not in url:
        raise BenchError(
            f"--storage {url!r} is not a storage URL; use sqlite:///PATH.db, "
            "journal:///PATH.log (or a path ending in .log), or a database URL such as "
            "postgresql+psycopg2://user:password@host/db"
        )
    return "rdb", None


def import_storage_modules(url: str) -> None:
    """Import what opening the storage at `url` imports (for a database: SQLAlchemy's ORM and
    the alembic modules Optuna checks the schema with, about 0.4 s), without opening it.

    `bench run` calls this before its first MLflow call, which waits for the MLflow sidecar
    to finish starting: the imports run in that wait instead of after it.
    """
    import importlib

    if storage_file(url)[0] != "journal":
        for module in ("sqlalchemy.orm", "alembic.config", "alembic.migration", "alembic.script"):
            importlib.import_module(module)


def open_storage(url: str, *, create: bool) -> "optuna.storages.BaseStorage":
    """The Optuna storage behind `url`; with create=False a missing local file is an error.

    Opening an SQLite URL creates the file, so readers (`bench show`, `bench table`) check first
    and never leave an empty database behind.
    """
    import optuna
    import sqlalchemy.exc
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    kind, path = storage_file(url)
    if path is not None and not create and not path.is_file():
        raise BenchError(
            f"no Optuna storage at {path} (from --storage {url}); run `bench run --study NAME` "
            "first, or pass the --storage the study was run with"
        )
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "journal":
        return JournalStorage(JournalFileBackend(str(path)))
    engine_kwargs = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}} if kind == "sqlite" else {}
    deadline = time.monotonic() + SCHEMA_RACE_S
    while True:
        try:
            with warnings.catch_warnings():
                # Heartbeats are "experimental" in Optuna 5 (since 2.9); the warning is noise.
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                storage = optuna.storages.RDBStorage(
                    url,
                    engine_kwargs=engine_kwargs,
                    heartbeat_interval=HEARTBEAT_INTERVAL_S,
                    grace_period=HEARTBEAT_GRACE_S,
                    # A reader must not create tables in someone's database server either.
                    skip_table_creation=not create,
                    skip_compatibility_check=url in _SCHEMA_CHECKED,
                )
                _SCHEMA_CHECKED.add(url)
                return storage
        except sqlalchemy.exc.IntegrityError:
            # Workers started together on an empty database server all create Optuna's schema;
            # PostgreSQL lets one win (the others hit a duplicate type or table). The winner's
            # schema is complete once its transaction commits: open it again.
            if kind != "rdb" or not create or time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def load_optuna_study(name: str, url: str) -> "optuna.Study":
    """The existing Optuna study `name` in `url`, or BenchError saying how to create it."""
    import optuna

    storage = open_storage(url, create=False)
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        raise BenchError(
            f"study {name!r} is not in the storage {url}; run `bench run --study {name}` "
            "(with the same --storage) first"
        ) from None


@dataclass(frozen=True)
class Results:
    """A study's results: COMPLETE trials (one row each), the real-data row, meta, progress."""

    # params, score keys (and their "bootstrap.*" keys), "cell", "trial", TRIAL_COLUMNS, costs,
    # RUN_COLUMNS
    frame: "pandas.DataFrame"
    reference: dict[str, float] | None  # held-out real data scored like the samples
    # dataset, resolution, evaluator, num_samples, sampler, steps, eta, random_weights,
    # lpips_trunk, and optionally "protocols": {score key: protocol label}
    meta: dict[str, Any]
    total: int  # cells of a grid study, or n_trials of a search
    states: Counter  # trial state name -> count, e.g. {"COMPLETE": 3, "RUNNING": 1}
    trials: "pandas.DataFrame"  # every trial: trial, state, cell, value, duration_s, scores
    # Where each score came from: "trial N" / REAL_DATA -> Scorer.build (None: not recorded)
    evaluator_builds: dict[str, dict[str, str] | None] = dataclasses.field(default_factory=dict)

    @property
    def rows(self) -> list[dict[str, Any]]:
        """`frame` as one dict per COMPLETE trial (what bench.tables reads, as from Records)."""
        return self.frame.to_dict("records")


REAL_DATA = "the real-data row"


def check_one_evaluator_build(results: "Records | Results") -> None:
    """Raise BenchError when the scores come from more than one evaluator build (weights or
    reference statistics hashes), naming the trials of each; scores that recorded none (a
    study run before builds were recorded) count as one build of their own."""
    groups: dict[str, list[str]] = {}
    for source, build in results.evaluator_builds.items():
        if build is None:
            label = "unrecorded"
        else:
            label = (
                f"weights {build.get('weights_sha256', '?')[:12]}, "
                f"reference {build.get('reference_sha256', '?')[:12]}"
            )
        groups.setdefault(label, []).append(source)
    if len(groups) > 1:
        listing = "; ".join(f"{label}: {', '.join(sources)}" for label, sources in groups.items())
        raise BenchError(
            "the scores come from different evaluator builds, which do not compare: "
            f"{listing}. Run the study again in a fresh --storage: its workers all score with "
            "the build the first one publishes"
        )


def _params(trial: "optuna.trial.FrozenTrial") -> dict[str, Any]:
    """The trial's config params as the study wrote them (grid values unencoded)."""
    return dict(trial.user_attrs.get("params", trial.params))


def _stored_scores(attrs: dict[str, Any], key: str, old_key: str) -> dict[str, float] | None:
    """The scores stored under `key`, or under `old_key` by versions before scores were named
    apart from metric losses ("metrics", "reference_metrics")."""
    return attrs.get(key, attrs.get(old_key))


def failure_kind(trial: "optuna.trial.FrozenTrial") -> str:
    """Why a FAIL trial failed: "lost" (its worker died), "interrupted" (Ctrl-C or SIGTERM;
    both resume on the next `bench run`) or "error" (anything else: --retry-failed)."""
    kind = trial.user_attrs.get("failure")
    return kind if kind in ("lost", "interrupted") else "error"


@dataclass(frozen=True)
class Records:
    """A study's trials read back as plain dicts (no pandas): what `bench show` prints, and what
    load_results builds its frames from."""

    complete: list[dict[str, Any]]  # one per COMPLETE trial: the row of Results.frame
    trials: list[dict[str, Any]]  # one per trial: the row of Results.trials
    reference: dict[str, float] | None
    meta: dict[str, Any]
    total: int
    states: Counter
    evaluator_builds: dict[str, dict[str, str] | None]

    @property
    def rows(self) -> list[dict[str, Any]]:
        """The COMPLETE trials (as Results.rows)."""
        return self.complete


def read_records(study: "Study", storage: str | None = None) -> Records:
    """Read `study`'s trials back from its Optuna storage (default DEFAULT_STORAGE); from a
    local storage file unchanged since the last read, from that read's snapshot
    (bench.record_cache)."""
    url = storage or DEFAULT_STORAGE
    _, path = storage_file(url)
    data = record_cache.cached(path, study.name, study.size, lambda: _plain(study, url))
    return Records(**{**data, "states": Counter(data["states"])})


def _plain(study: "Study", url: str) -> dict[str, Any]:
    """The records as JSON-able data (Records' fields; states a plain dict)."""
    records = _read_records(study, url)
    fields = {f.name: getattr(records, f.name) for f in dataclasses.fields(records)}
    return {**fields, "states": dict(records.states)}


def _read_records(study: "Study", url: str) -> Records:
    optuna_study = load_optuna_study(study.name, url)
    attrs = optuna_study.user_attrs
    rows, everything = [], []
    builds: dict[str, dict[str, str] | None] = {}
    reference = _stored_scores(attrs, "reference_scores", "reference_metrics")
    if reference is not None:
        builds[REAL_DATA] = attrs.get("reference_evaluator_build")
    states: Counter = Counter()
    for trial in optuna_study.get_trials(deepcopy=False):
        states[trial.state.name] += 1
        scores = _stored_scores(trial.user_attrs, "scores", "metrics") or {}
        duration = trial.duration.total_seconds() if trial.duration is not None else None
        everything.append(
            {
                "trial": trial.number,
                "state": trial.state.name,
                "cell": trial.user_attrs.get("cell", ""),
                "value": trial.value,
                "duration_s": duration,
                "failure": failure_kind(trial) if trial.state.name == "FAIL" else "",
                "error": trial.user_attrs.get("error", ""),
                "notices": trial.user_attrs.get("notices", []),
                "owner": trial.user_attrs.get("owner", ""),
                **scores,
            }
        )
        if trial.state.name != "COMPLETE":
            continue
        row = {"trial": trial.number, "cell": trial.user_attrs.get("cell", "")}
        row.update(_params(trial))
        row.update(scores)
        row.update(trial.user_attrs.get("bootstrap", {}))  # "bootstrap.<score>.se", resamples
        row.update({key: trial.user_attrs.get(key) for key in TRIAL_COLUMNS + RUN_COLUMNS})
        row.update({COST_PREFIX + k: v for k, v in trial_cost(trial.user_attrs).items()})
        rows.append(row)
        builds[f"trial {trial.number}"] = trial.user_attrs.get("evaluator_build")
    return Records(
        complete=rows,
        trials=everything,
        reference=reference,
        meta=dict(attrs.get("meta", {})),
        total=int(attrs.get("total_cells", study.size)),
        states=states,
        evaluator_builds=builds,
    )


def load_results(study: "Study", storage: str | None = None) -> Results:
    """Read `study` back from its Optuna storage (default DEFAULT_STORAGE) as frames."""
    import pandas

    records = read_records(study, storage)
    axes = list(study.grid) if study.is_grid else list(study.search)
    score_keys = list(study.table.scores)
    cost_columns = [COST_PREFIX + key for key in COSTS]
    columns = ["trial", "cell", *axes, *score_keys, *TRIAL_COLUMNS, *cost_columns, *RUN_COLUMNS]
    frame = pandas.DataFrame(records.complete)
    for column in columns:
        if column not in frame:
            frame[column] = pandas.Series(dtype=object)
    extra = [c for c in frame.columns if c not in columns]
    everything = records.trials
    trials = pandas.DataFrame(everything, columns=None if everything else ["trial", "state"])
    return Results(
        frame=frame[columns + extra],
        reference=records.reference,
        meta=records.meta,
        total=records.total,
        states=records.states,
        trials=trials,
        evaluator_builds=records.evaluator_builds,
    )


def describe_storage(url: str) -> str:
    """A one-line description of a storage URL for messages (never shows a password)."""
    kind, path = storage_file(url)
    if path is not None:
        return f"{kind} file {path}"
    from sqlalchemy.engine import make_url

    return f"database {make_url(url).render_as_string(hide_password=True)}"


def stored_caveats(meta: dict[str, Any]) -> list[str]:
    """The caveats of a study's components (study meta "caveats"). Studies stored before
    components had caveats recorded only a metric loss's random trunk ("lpips_trunk")."""
    if "caveats" in meta:
        return list(meta["caveats"])
    if "random" in str(meta.get("lpips_trunk") or ""):
        return [RANDOM_TRUNK_CAVEAT]
    return []


# What studies stored before components had caveats get for a random trunk.
RANDOM_TRUNK_CAVEAT = "The metric loss used a random (untrained) trunk: a smoke test, not a result."
