"""Studies: one TOML file per study in studies/, parsed and validated before any work starts.

A study holds a description, the base RunConfig, the search space (grid axes, or TPE ranges),
the objective score and the table layout (see studies/quickstart.toml). `load_study` checks all
of it up front: every grid cell's RunConfig is built, every registry name looked up, and the
UNet's shape checked against the resolution, so a bad value fails with exit code 2 and a message
naming the file, the key, the value and what is allowed, before any database or file is touched.
"""

import dataclasses
import itertools
import re
import tomllib
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.config import RunConfig
from bench.errors import BenchError
from bench.evaluation import scores as score_registry
from bench.evaluation.scores import Direction
from casdm.config import (
    Choice,
    ConfigError,
    flatten,
    from_dict,
    merge,
    option_takers,
    option_types,
    unflatten,
)

STUDIES_DIR = Path("studies")

# Study names become folder names (results/NAME) and database keys: no path can hide in one.
NAME_PATTERN = re.compile(r"[A-Za-z0-9_.-]+")

TOP_KEYS = (
    "description", "objective", "base", "grid", "search", "n_trials", "table", "labels",
    "questions",
)  # fmt: skip
QUESTION_KEYS = ("score", "alpha", "min_effect", "contrasts")
CONTRAST_KEYS = ("of", "against")
DEFAULT_ALPHA = 0.05
OBJECTIVE_KEYS = ("score", "direction")
TABLE_KEYS = ("rows", "columns", "scores", "baseline", "cost", "layout")
# Old names still read: objective.metric (score), table.metrics (scores).
OLD_KEYS = {"objective": ("metric",), "table": ("metrics",)}
LAYOUTS = ("auto", "wide", "long")
RANGE_KEYS = ("low", "high", "log", "step")
DIRECTIONS = ("minimize", "maximize")
DEFAULT_TABLE_SCORES = ("fid", "sfid", "is_mean")
DEFAULT_OBJECTIVE = "fid"


@dataclass(frozen=True)
class Range:
    """A numeric TPE axis: Optuna's suggest_float, or suggest_int where the key is an int."""

    low: float
    high: float
    log: bool = False
    step: float | None = None
    integer: bool = False


@dataclass(frozen=True)
class Choices:
    """A categorical TPE axis: Optuna's suggest_categorical."""

    choices: tuple[Any, ...]


@dataclass(frozen=True)
class TableLayout:
    """Axes (dotted keys) making the row labels and the column groups, and the scores shown.

    `baseline` (axis -> value) names the cells every other cell is tested against (the one with
    the same values on the other axes); `cost` the cost columns shown (bench.costs.COSTS);
    `layout` "wide", "long" or "auto" (whichever fits the page, bench.tables).
    """

    rows: tuple[str, ...]
    columns: tuple[str, ...]
    scores: tuple[str, ...]
    baseline: dict[str, Any] = dataclasses.field(default_factory=dict)
    cost: tuple[str, ...] = ()
    layout: str = "auto"


@dataclass(frozen=True)
class DeclaredContrast:
    """A declared comparison: every cell whose axes hold `of`'s values (all cells when empty),
    other than the `against` cells themselves, against the cell with `against`'s values put in
    (the other axes, seeds included, equal: a paired comparison)."""

    against: dict[str, Any]
    of: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclass(frozen=True)
class Questions:
    """What a study asks ([questions]): the declared contrasts on its primary score, tested as
    one family at `alpha` (family-wise), and the smallest effect that matters per score (in
    the score's unit). Every other score and comparison is an exploratory estimate."""

    score: str
    alpha: float = DEFAULT_ALPHA
    min_effect: dict[str, float] = dataclasses.field(default_factory=dict)
    contrasts: tuple[DeclaredContrast, ...] = ()


@dataclass(frozen=True)
class Study:
    """A validated study file; `base` already holds the `--set` overrides."""

    name: str
    path: Path
    description: str
    base: dict[str, Any]
    grid: dict[str, list[Any]]
    search: dict[str, Range | Choices]
    n_trials: int | None
    objective_score: str
    direction: Direction
    table: TableLayout
    labels: dict[str, dict[str, str]]
    overrides: tuple[str, ...]
    questions: Questions | None = None  # None: nothing declared and no table baseline

    @property
    def is_grid(self) -> bool:
        """True for a grid study (every cell runs once), False for a TPE search."""
        return not self.search

    @property
    def size(self) -> int:
        """Number of trials the study runs: grid cells, or n_trials for a search."""
        return len(self.cells()) if self.is_grid else int(self.n_trials or 0)

    def cells(self) -> list[dict[str, Any]]:
        """The cartesian product of the grid axes, as flat dotted params, in file order."""
        keys = list(self.grid)
        return [
            dict(zip(keys, combo, strict=True)) for combo in itertools.product(*self.grid.values())
        ]

    def config(self, params: dict[str, Any]) -> RunConfig:
        """base + overrides + params as a validated RunConfig (registry names, UNet shape)."""
        return _build(self.path, self.base, params, self._sources(params))

    def cell_name(self, params: dict[str, Any]) -> str:
        """Short label of a cell from its axes, e.g. "cas-dm lpips=0.3 seed=1"."""
        parts = []
        for key, value in params.items():
            parent, _, leaf = key.rpartition(".")
            if leaf == "name":
                parts.append(value_text(value))
            elif leaf == "weight" and parent:
                # A loss weight reads best with its loss: "lpips=0.3" rather than "weight=0.3".
                parts.append(f"{self._value(f'{parent}.name', params)}={value_text(value)}")
            else:
                parts.append(f"{leaf}={value_text(value)}")
        return " ".join(parts)

    def value_label(self, key: str, value: Any) -> str:
        """Display text of an axis value: the study's [labels] entry, else a default."""
        label = self.labels.get(key, {}).get(value_text(value))
        if label is not None:
            return label
        leaf = key.rpartition(".")[2]
        return value_text(value) if leaf == "name" else f"{leaf}={value_text(value)}"

    def values(self, key: str) -> list[Any]:
        """The values a dotted key takes: a grid axis's, a search's choices or bounds, or base's."""
        if key in self.grid:
            return list(self.grid[key])
        axis = self.search.get(key)
        if isinstance(axis, Choices):
            return list(axis.choices)
        if isinstance(axis, Range):
            return [axis.low, axis.high]
        return [self._value(key, {})]

    def trial_configs(self) -> list[RunConfig]:
        """Every config a trial may run: each grid cell, or each search choice at its bounds."""
        configs = [self.config(params) for params in self.cells()]
        if not self.is_grid:
            for params in self.cells():
                for key, axis in self.search.items():
                    values = axis.choices if isinstance(axis, Choices) else (axis.low, axis.high)
                    configs.extend(self.config({**params, key: value}) for value in values)
        return configs

    def results_dir(self, root: Path = Path("results")) -> Path:
        """Where this study's tables and trial folders go: root / name."""
        return root / self.name

    def _value(self, key: str, params: dict[str, Any]) -> Any:
        if key in params:
            return params[key]
        node: Any = from_dict(RunConfig, self.base)
        for part in key.split("."):
            node = getattr(node, part)
        return node

    def _sources(self, params: dict[str, Any]) -> dict[str, str]:
        """Where each key of a cell comes from, for error messages."""
        sources = {key: f"grid.{key}" for key in self.grid}
        sources.update({key: f"search.{key}" for key in self.search})
        sources.update(_override_sources(self.overrides))
        if len(params) > 0 and self.is_grid:
            sources[""] = f"grid cell '{self.cell_name(params)}'"
        return sources


def slug(name: str) -> str:
    """A cell name as a file or folder name: "cas-dm lpips=0.3" -> "cas-dm_lpips=0.3"."""
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", name).strip("_") or "_"


def value_text(value: Any) -> str:
    """Canonical text of an axis value: 0.30 -> "0.3", 1.0 -> "1", True -> "true".

    Floats keep Python's shortest exact repr (distinct values never share a text), minus ".0".
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value).removesuffix(".0")
    if isinstance(value, list | tuple):
        return "[" + ", ".join(value_text(v) for v in value) + "]"
    return str(value)


def available_studies(directory: Path = STUDIES_DIR) -> list[str]:
    """Names of the studies in `directory` (file stems of *.toml), sorted."""
    return sorted(p.stem for p in directory.glob("*.toml")) if directory.is_dir() else []


def find_study(name_or_path: str) -> Path:
    """studies/NAME.toml for a study name, or the given .toml path; BenchError otherwise."""
    candidate = Path(name_or_path)
    if candidate.suffix == ".toml" and candidate.is_file():
        return candidate
    if (
        candidate.suffix == ".toml"
        and (STUDIES_DIR / candidate).is_file()
        and len(candidate.parts) == 1
    ):
        return STUDIES_DIR / candidate
    if NAME_PATTERN.fullmatch(name_or_path) and ".." not in name_or_path:
        path = STUDIES_DIR / f"{name_or_path}.toml"
        if path.is_file():
            return path
        what = f"unknown study {name_or_path!r}"
    elif candidate.suffix == ".toml":
        what = f"study file {name_or_path!r} does not exist"
    else:
        what = (
            f"{name_or_path!r} is neither a study name (letters, digits, '_', '.', '-') "
            "nor the path of an existing .toml file"
        )
    names = ", ".join(available_studies()) or f"none (no *.toml in {STUDIES_DIR}/)"
    raise BenchError(
        f"{what}; available studies in {STUDIES_DIR}/: {names}; "
        "or give the path of a study .toml file"
    )


def parse_override(text: str) -> tuple[str, Any]:
    """`--set KEY=VALUE` -> (dotted RunConfig key, value parsed as TOML, else a bare string)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise BenchError(
            f"--set {text!r}: expected KEY=VALUE with a dotted config key, "
            "e.g. --set train.steps=100 or --set architecture.name=cas-dm"
        )
    value = _parse_value(raw.strip())
    try:
        field_type(key)
        # The value alone, on default settings: its type, range and registry name.
        _check_field(key, value)
    except ConfigError as err:
        raise BenchError(f"--set {text}: {err}") from None
    return key, normalize(key, value)


def load_study(name_or_path: str, overrides: Sequence[str] = ()) -> Study:
    """Parse and fully validate a study (every cell, every name) with `--set` overrides applied."""
    path = find_study(name_or_path)
    name = path.stem
    if not NAME_PATTERN.fullmatch(name) or ".." in name:
        raise BenchError(
            f"{path}: the study name {name!r} (the file name) may only use letters, digits, "
            "'_', '.' and '-'; rename the file"
        )
    data = _read_toml(path)
    parsed = [parse_override(text) for text in overrides]

    _check_keys(path, "", data, TOP_KEYS)
    description = data.get("description")
    if not isinstance(description, str) or not description.strip():
        raise _error(path, "description", f"got {description!r}; expected a non-empty string")
    base = _table(path, "base", data.get("base", {}))
    grid = _read_grid(path, data.get("grid", {}))
    search = _read_search(path, data.get("search", {}))
    n_trials = _read_n_trials(path, data, search)
    if search and set(grid) - {"seed"}:
        extra = ", ".join(sorted(set(grid) - {"seed"}))
        raise _error(
            path,
            "grid",
            f"a study with [search] may only fix seeds in [grid], found {extra}; "
            "move those axes to [search] as choices, or drop [search] for a grid study",
        )

    # Labels name the file's axis values: checked against the axes before `--set` narrows one.
    file_axes = ({key: list(values) for key, values in grid.items()}, dict(search))
    # Overrides replace the base value, a grid axis (by a single value) or a search axis (by
    # a single choice), so the table keeps its layout.
    for key, value in parsed:
        if key in grid:
            grid[key] = [value]
        elif key in search:
            search[key] = Choices((value,))
        else:
            base = merge(base, unflatten({key: value}))

    sources = _override_sources(tuple(overrides))
    _check_base(path, base, sources)
    for key, values in grid.items():
        for value in values:
            _check_axis_value(path, key, value, sources.get(key, f"grid.{key}"))
    for key, axis in search.items():
        _check_search_axis(path, base, key, axis, sources.get(key, f"search.{key}"))

    labels = _read_labels(path, data.get("labels", {}), *file_axes)
    objective_score, direction = _read_objective(path, data.get("objective", {}))
    axes = [*grid, *search]
    table = _read_table(path, data.get("table"), axes, file_axes[0])
    questions = _read_questions(path, data.get("questions"), grid, table, objective_score)
    study = Study(
        name=name,
        path=path,
        description=description.strip(),
        base=base,
        grid=grid,
        search=search,
        n_trials=n_trials,
        objective_score=objective_score,
        direction=direction,
        table=table,
        labels=labels,
        overrides=tuple(overrides),
        questions=questions,
    )
    configs = study.trial_configs()
    # [base] options are checked on the study as written: a --set that narrows a grid (e.g.
    # metric.name=none) may leave them unused.
    explicit = {} if overrides else {key: f"base.{key}" for key in flatten(base)}
    explicit.update({key: f"grid.{key}" for key in grid})
    explicit.update({key: f"search.{key}" for key in search})
    explicit.update(sources)
    _check_options_used(path, configs, explicit)
    return study


def _check_options_used(path: Path, configs: list[RunConfig], explicit: dict[str, str]) -> None:
    """Every component option the study sets (`explicit`: key -> where) must be taken by the
    component of some cell.

    An option of another component of the same kind is ignored where that component is not
    chosen (one [base] serves a grid over metric.name), but one that no cell uses is a mistake.
    """
    for key, where in explicit.items():
        section, _, leaf = key.partition(".")
        choice = getattr(configs[0], section, None) if configs else None
        if not isinstance(choice, Choice) or not leaf or "." in leaf:
            continue
        if leaf in {f.name for f in dataclasses.fields(choice) if f.name != "options"}:
            continue
        chosen = [getattr(config, section) for config in configs]
        if any(leaf in {f.name for f in dataclasses.fields(c.options)} for c in chosen):
            continue
        takers = [c.name for c in option_takers(type(choice), leaf)]
        used = ", ".join(dict.fromkeys(c.component_name for c in chosen))
        raise _error(
            path,
            where,
            f"only the {' and '.join(takers)} {choice.kind} takes {leaf}, and no cell of this "
            f"study uses it (its {choice.kind}s: {used}); remove {key}, or choose "
            f"{choice.selector} = {takers[0]!r}",
        )


# --- reading the file ---------------------------------------------------------------------


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise BenchError(f"{path}: cannot read the study file: {err}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        # The message carries the position, e.g. "Invalid value (at line 3, column 9)".
        raise BenchError(f"{path}: TOML syntax error: {err}") from None


def _parse_value(raw: str) -> Any:
    """A `--set` or label value as TOML (10, 0.3, true, [1, 2], "x"), else the bare string."""
    try:
        return tomllib.loads(f"value = {raw}")["value"]
    except tomllib.TOMLDecodeError:
        return raw


def _error(path: Path, key: str, message: str) -> BenchError:
    return BenchError(f"{path}: {key}: {message}" if key else f"{path}: {message}")


def _check_keys(path: Path, where: str, table: dict[str, Any], allowed: Sequence[str]) -> None:
    for key in table:
        if key not in allowed and key not in OLD_KEYS.get(where, ()):
            prefix = f"{where}." if where else ""
            raise _error(path, f"{prefix}{key}", f"unknown key; allowed: {', '.join(allowed)}")


def _table(path: Path, key: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _error(path, key, f"got {value!r}; expected a table [{key}]")
    return value


def _flatten_axes(
    path: Path, where: str, table: Any, is_leaf: Callable[[str, Any], bool], prefix: str = ""
) -> dict[str, Any]:
    """Dotted keys of a [grid], [search] or [labels] table, quoted ("metric.name") or not."""
    out: dict[str, Any] = {}
    for key, value in _table(path, where, table).items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and not is_leaf(dotted, value):
            out.update(_flatten_axes(path, f"{where}.{key}", value, is_leaf, f"{dotted}."))
        else:
            out[dotted] = value
    return out


def _read_grid(path: Path, table: Any) -> dict[str, list[Any]]:
    grid: dict[str, list[Any]] = {}
    for key, values in _flatten_axes(path, "grid", table, lambda key, value: False).items():
        where = f"grid.{key}"
        _check_key(path, where, key)
        if not isinstance(values, list) or not values:
            raise _error(
                path, where, f"got {values!r}; expected a non-empty list of values, e.g. [1, 2]"
            )
        normalized = [normalize(key, v) for v in values]
        repeated = [v for i, v in enumerate(normalized) if v in normalized[:i]]
        if repeated:
            raise _error(path, where, f"value {repeated[0]!r} is listed twice in {values!r}")
        grid[key] = normalized
    return grid


def _read_search(path: Path, table: Any) -> dict[str, Range | Choices]:
    def is_axis(key: str, value: dict) -> bool:
        return bool(set(value) & {"low", "high", "choices"})

    search: dict[str, Range | Choices] = {}
    for key, spec in _flatten_axes(path, "search", table, is_axis).items():
        where = f"search.{key}"
        _check_key(path, where, key)
        if not isinstance(spec, dict):
            raise _error(
                path,
                where,
                f"got {spec!r}; expected {{ low = ..., high = ..., log = false }} "
                "or { choices = [...] }",
            )
        if "choices" in spec:
            _check_keys(path, where, spec, ("choices",))
            choices = spec["choices"]
            if not isinstance(choices, list) or not choices:
                raise _error(
                    path, f"{where}.choices", f"got {choices!r}; expected a non-empty list"
                )
            search[key] = Choices(tuple(normalize(key, c) for c in choices))
        else:
            search[key] = _read_range(path, where, key, spec)
    return search


def _read_range(path: Path, where: str, key: str, spec: dict[str, Any]) -> Range:
    _check_keys(path, where, spec, RANGE_KEYS)
    for bound in ("low", "high"):
        value = spec.get(bound)
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise _error(path, f"{where}.{bound}", f"got {value!r}; expected a number")
    low, high = spec["low"], spec["high"]
    log, step = spec.get("log", False), spec.get("step")
    if field_type(key) not in (int, float):
        raise _error(path, where, f"{key} is not a number; use {{ choices = [...] }} for it")
    integer = field_type(key) is int
    if integer and not (isinstance(low, int) and isinstance(high, int)):
        raise _error(path, where, f"{key} is an integer; got low={low!r}, high={high!r}")
    if not isinstance(log, bool):
        raise _error(path, f"{where}.log", f"got {log!r}; expected true or false")
    if not low < high:
        raise _error(path, where, f"low must be < high, got low={low!r}, high={high!r}")
    if log and low <= 0:
        raise _error(path, f"{where}.low", f"a log range needs low > 0, got {low!r}")
    if step is not None:
        if not isinstance(step, int | float) or isinstance(step, bool) or step <= 0:
            raise _error(path, f"{where}.step", f"got {step!r}; expected a number > 0")
        if log:
            raise _error(path, f"{where}.step", "step cannot be combined with log = true")
    return Range(low=low, high=high, log=log, step=step, integer=integer)


def _read_n_trials(path: Path, data: dict[str, Any], search: dict) -> int | None:
    n_trials = data.get("n_trials")
    if n_trials is None:
        if search:
            raise _error(path, "n_trials", "a study with [search] needs n_trials, e.g. 20")
        return None
    if not search:
        raise _error(
            path,
            "n_trials",
            f"got {n_trials!r}, but a grid study runs each cell once; "
            "remove n_trials, or define a [search]",
        )
    if not isinstance(n_trials, int) or isinstance(n_trials, bool) or n_trials < 1:
        raise _error(path, "n_trials", f"got {n_trials!r}; expected an integer >= 1")
    return n_trials


def _check_score_key(path: Path, where: str, score: Any) -> None:
    if not isinstance(score, str) or score not in score_registry.names():
        names = ", ".join(score_registry.names())
        raise _error(path, where, f"unknown score {score!r}; valid scores: {names}")


def _renamed(path: Path, table: dict[str, Any], section: str, new: str, old: str) -> Any:
    """table[new], or table[old] (the spelling before scores and metric losses had separate
    words); both at once is an error."""
    if new in table and old in table:
        raise _error(
            path,
            f"{section}.{old}",
            f"{section}.{old} is the old name of {section}.{new}; keep one",
        )
    return table.get(new, table.get(old))


def _read_objective(path: Path, table: Any) -> tuple[str, Direction]:
    _check_keys(path, "objective", _table(path, "objective", table), OBJECTIVE_KEYS)
    score = _renamed(path, table, "objective", "score", "metric")
    score = DEFAULT_OBJECTIVE if score is None else score
    where = "objective.score" if "metric" not in table else "objective.metric"
    _check_score_key(path, where, score)
    natural = score_registry.direction(score)
    direction = table.get("direction", natural)
    if direction not in DIRECTIONS:
        raise _error(
            path, "objective.direction", f"got {direction!r}; allowed: {', '.join(DIRECTIONS)}"
        )
    if natural is not None and direction != natural:
        raise _error(
            path,
            "objective.direction",
            f"got {direction!r}, but {score} is better when "
            f"{'lower' if natural == 'minimize' else 'higher'}; use {natural!r}",
        )
    return score, direction


def _read_table(path: Path, table: Any, axes: list[str], grid: dict[str, list[Any]]) -> TableLayout:
    if table is None:
        rows = tuple(a for a in axes if a != "seed")
        return TableLayout(rows=rows, columns=(), scores=DEFAULT_TABLE_SCORES)
    _check_keys(path, "table", _table(path, "table", table), TABLE_KEYS)
    layout: dict[str, tuple[str, ...]] = {}
    for part in ("rows", "columns"):
        keys = table.get(part, [])
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise _error(path, f"table.{part}", f"got {keys!r}; expected a list of axis keys")
        for key in keys:
            if key not in axes:
                raise _error(
                    path,
                    f"table.{part}",
                    f"{key!r} is not an axis of this study; axes: {', '.join(axes) or 'none'}",
                )
        layout[part] = tuple(keys)
    shown = [*layout["rows"], *layout["columns"]]
    repeated = [k for i, k in enumerate(shown) if k in shown[:i]]
    if repeated:
        raise _error(path, "table", f"axis {repeated[0]!r} is used twice in rows/columns")
    hidden = [a for a in axes if a != "seed" and a not in shown]
    if hidden:
        raise _error(
            path,
            "table",
            f"axis {hidden[0]!r} is in neither table.rows nor table.columns; only seeds are "
            "averaged over, so every other axis must be shown",
        )
    scores = _renamed(path, table, "table", "scores", "metrics")
    where = "table.metrics" if "metrics" in table else "table.scores"
    scores = list(DEFAULT_TABLE_SCORES) if scores is None else scores
    if not isinstance(scores, list) or not scores:
        raise _error(path, where, f"got {scores!r}; expected a non-empty list of score names")
    for score in scores:
        _check_score_key(path, where, score)
    if len(set(scores)) != len(scores):
        raise _error(path, where, f"got {scores!r}; a score is listed twice")
    return TableLayout(
        rows=layout["rows"],
        columns=layout["columns"],
        scores=tuple(scores),
        baseline=_read_baseline(path, table.get("baseline", {}), grid),
        cost=_read_cost(path, table.get("cost", [])),
        layout=_read_layout(path, table.get("layout", "auto")),
    )


def _read_baseline(
    path: Path, table: Any, grid: dict[str, list[Any]], section: str = "table.baseline"
) -> dict[str, Any]:
    """{ "metric.weight" = 0 }: grid axes (not seed) and one of each axis's values."""
    baseline: dict[str, Any] = {}
    for key, value in _flatten_axes(path, section, table, lambda k, v: False).items():
        where = f"{section}.{key}"
        if key not in grid or key == "seed":
            axes = ", ".join(k for k in grid if k != "seed")
            raise _error(path, where, f"not a grid axis; grid axes: {axes or 'none'}")
        known = {value_text(v): v for v in grid[key]}
        text = value_text(normalize(key, value))
        if text not in known:
            raise _error(
                path, where, f"{value!r} is not a value of the axis; values: {', '.join(known)}"
            )
        baseline[key] = known[text]
    return baseline


def _read_questions(
    path: Path, table: Any, grid: dict[str, list[Any]], layout: TableLayout, objective: str
) -> Questions | None:
    """[questions]: score (default the objective's), alpha, min_effect = { score = effect },
    contrasts = [{ of = {axis = value}, against = {axis = value} }] (default: every cell
    against its [table] baseline cell). None when nothing is declared and there is no
    baseline."""
    if table is None:
        if not layout.baseline:
            return None
        return Questions(score=objective, contrasts=(DeclaredContrast(against=layout.baseline),))
    _check_keys(path, "questions", _table(path, "questions", table), QUESTION_KEYS)
    score = table.get("score", objective)
    _check_score_key(path, "questions.score", score)
    alpha = table.get("alpha", DEFAULT_ALPHA)
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0 < alpha < 1:
        raise _error(path, "questions.alpha", f"got {alpha!r}; expected a number in (0, 1)")
    min_effect = {}
    for name, effect in _table(path, "questions.min_effect", table.get("min_effect", {})).items():
        _check_score_key(path, f"questions.min_effect.{name}", name)
        if isinstance(effect, bool) or not isinstance(effect, int | float) or effect <= 0:
            raise _error(
                path,
                f"questions.min_effect.{name}",
                f"got {effect!r}; expected a positive number in the score's unit",
            )
        min_effect[name] = float(effect)
    declared = table.get("contrasts")
    if declared is None:
        if not layout.baseline:
            raise _error(
                path,
                "questions.contrasts",
                "no contrasts declared and no [table] baseline to default to; declare "
                'contrasts = [{ against = { "metric.name" = "none" } }] or set table.baseline',
            )
        contrasts = (DeclaredContrast(against=layout.baseline),)
    else:
        if not isinstance(declared, list) or not declared:
            raise _error(
                path, "questions.contrasts", f"got {declared!r}; expected a non-empty list"
            )
        contrasts = tuple(_read_contrast(path, i, c, grid) for i, c in enumerate(declared))
    return Questions(score, float(alpha), min_effect, contrasts)


def _read_contrast(
    path: Path, index: int, table: Any, grid: dict[str, list[Any]]
) -> DeclaredContrast:
    where = f"questions.contrasts[{index}]"
    _check_keys(path, where, _table(path, where, table), CONTRAST_KEYS)
    if not table.get("against"):
        raise _error(path, f"{where}.against", "missing: the axis values of the baseline cells")
    against = _read_baseline(path, table["against"], grid, f"{where}.against")
    of = _read_baseline(path, table.get("of", {}), grid, f"{where}.of")
    if set(of) & set(against) and all(value_text(of[k]) == value_text(against[k]) for k in of):
        raise _error(path, where, "`of` and `against` name the same cells; nothing is compared")
    return DeclaredContrast(against=against, of=of)


def _read_cost(path: Path, keys: Any) -> tuple[str, ...]:
    from bench.costs import COSTS

    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise _error(path, "table.cost", f"got {keys!r}; expected a list of cost keys")
    for key in keys:
        if key not in COSTS:
            raise _error(
                path, "table.cost", f"unknown cost {key!r}; valid costs: {', '.join(COSTS)}"
            )
    if len(set(keys)) != len(keys):
        raise _error(path, "table.cost", f"got {keys!r}; a cost is listed twice")
    return tuple(keys)


def _read_layout(path: Path, layout: Any) -> str:
    if layout not in LAYOUTS:
        raise _error(path, "table.layout", f"got {layout!r}; allowed: {', '.join(LAYOUTS)}")
    return layout


def _read_labels(
    path: Path, table: Any, grid: dict[str, list[Any]], search: dict[str, Range | Choices]
) -> dict[str, dict[str, str]]:
    labels: dict[str, dict[str, str]] = {}
    # A label table maps axis values to strings: { "cas-dm" = "Cas-DM" }.
    flat = _flatten_axes(
        path,
        "labels",
        table,
        lambda key, value: not any(isinstance(v, dict) for v in value.values()),
    )
    for key, mapping in flat.items():
        where = f"labels.{key}"
        axis = grid.get(key) or getattr(search.get(key), "choices", None)
        if axis is None:
            axes = ", ".join(k for k in (*grid, *search) if not isinstance(search.get(k), Range))
            raise _error(path, where, f"not a grid axis or search choice; axes: {axes or 'none'}")
        if not isinstance(mapping, dict):
            raise _error(path, where, f'got {mapping!r}; expected {{ value = "label", ... }}')
        known = {value_text(v): v for v in axis}
        labels[key] = {}
        for raw, label in mapping.items():
            text = value_text(normalize(key, _parse_value(raw)))
            if text not in known:
                raise _error(
                    path,
                    f"{where}.{raw}",
                    f"{raw!r} is not a value of the axis; values: {', '.join(known)}",
                )
            if not isinstance(label, str):
                raise _error(path, f"{where}.{raw}", f"got {label!r}; expected a string")
            labels[key][text] = label
    return labels


# --- validating configs -------------------------------------------------------------------


def field_type(key: str) -> Any:
    """The annotation of a dotted RunConfig leaf key; ConfigError naming the allowed keys.

    In a component's section (a Choice) a key may also be an option of any component of that
    kind (`metric.net`: lpips's); its type is that option's.
    """
    node: Any = RunConfig
    parts = key.split(".")
    for i, part in enumerate(parts):
        prefix = ".".join(parts[:i])
        if not dataclasses.is_dataclass(node):
            raise ConfigError(key, f"{prefix} is a value, not a table of keys")
        names = [f.name for f in dataclasses.fields(node) if f.name != "options"]
        if part in names:
            node = typing.get_type_hints(node)[part]
            continue
        options = option_types(node, part) if issubclass(node, Choice) else []
        if not options or i != len(parts) - 1:
            allowed = ", ".join(f"{prefix}.{n}" if prefix else n for n in names)
            more = ""
            if issubclass(node, Choice):
                more = f", or an option of a {node.kind} (see `bench list --components`)"
            raise ConfigError(key, f"unknown key {part!r}; allowed: {allowed}{more}")
        node = options[0]
    if dataclasses.is_dataclass(node):
        leaves = ", ".join(f"{key}.{f.name}" for f in dataclasses.fields(node))
        raise ConfigError(key, f"is a table, not a value; set one of: {leaves}")
    return node


def normalize(key: str, value: Any) -> Any:
    """An int given for a float key becomes a float, so 0 and 0.0 are one grid value."""
    if field_type(key) is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _check_key(path: Path, where: str, key: str) -> None:
    try:
        field_type(key)
    except ConfigError as err:
        raise _error(path, where, str(err).split(": ", 1)[1]) from None


def _check_field(key: str, value: Any) -> None:
    """Check one value alone, on default settings: its type, range and component name."""
    from_dict(RunConfig, unflatten({key: value}))


def _check_base(path: Path, base: dict[str, Any], sources: dict[str, str]) -> None:
    """The [base] table alone: keys, types, ranges and names (cross checks come per cell)."""
    try:
        from_dict(RunConfig, base)
    except ConfigError as err:
        raise _attributed(path, err, sources, "base") from None


def _check_axis_value(path: Path, key: str, value: Any, where: str) -> None:
    try:
        _check_field(key, value)
    except ConfigError as err:
        raise _error(path, where, str(err).split(": ", 1)[1]) from None


def _check_search_axis(path: Path, base: dict, key: str, axis: Range | Choices, where: str) -> None:
    values = axis.choices if isinstance(axis, Choices) else (axis.low, axis.high)
    for value in values:
        _build(path, base, {key: value}, {key: where})


def _override_sources(overrides: Sequence[str]) -> dict[str, str]:
    return {text.partition("=")[0].strip(): f"--set {text}" for text in overrides}


def _attributed(path: Path, err: ConfigError, sources: dict[str, str], default: str) -> BenchError:
    """The error at its source: a grid axis, a --set override, or the [base] table."""
    key = err.key
    message = str(err).split(": ", 1)[1] if key else str(err)
    owner = max(
        (k for k in sources if k and (key == k or key.startswith((f"{k}.", f"{k}[")))),
        key=len,
        default=None,
    )
    if owner is not None:
        where = sources[owner] if owner == key else f"{sources[owner]}: {key}"
    else:
        where = f"{default}.{key}" if key else default
    if owner is None and "" in sources:
        message += f" (in {sources['']})"
    return _error(path, where, message)


def _build(path: Path, base: dict, params: dict[str, Any], sources: dict[str, str]) -> RunConfig:
    try:
        config = from_dict(RunConfig, merge(base, unflatten(params)))
        config.validate()
    except ConfigError as err:
        raise _attributed(path, err, sources, "base") from None
    return config
