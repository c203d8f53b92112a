"""`bench ui`: start the MLflow UI on the study's tracking store, bound to 127.0.0.1 by default."""

import argparse
import os
import sys
from pathlib import Path

from bench.errors import BenchError
from bench.tracking_backend import sqlite_path, tracking_uri_for

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--study", help="print the URL of this study's experiment")
    parser.add_argument(
        "--tracking-uri", help="the MLflow tracking store (default sqlite:///RESULTS/mlflow.db)"
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default 127.0.0.1: this machine only; anything else exposes "
        "the UI, which has no authentication, to the network)",
    )
    parser.add_argument("--port", type=int, default=5000, help="port (default 5000)")
    parser.add_argument(
        "--results",
        type=Path,
        default=Path("results"),
        help="folder holding the default tracking store (default: results)",
    )


def ui_command(tracking_uri: str, host: str, port: int) -> list[str]:
    """The `mlflow ui` command line, run with this interpreter's MLflow."""
    return [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--backend-store-uri",
        tracking_uri,
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        "1",  # one person's browser: no need for MLflow's default pool of server processes
    ]


def runs_page_query(experiment) -> str:
    """The query that opens the runs table as model training, with the study's saved view."""
    from bench.tracking import VIEW_KEY, VIEW_TAG_PREFIX

    query = "workflowType=machine_learning"
    if VIEW_TAG_PREFIX + VIEW_KEY in experiment.tags:
        query += f"&viewStateShareKey={VIEW_KEY}"
    return query


def run(args: argparse.Namespace) -> int:
    tracking_uri = args.tracking_uri or tracking_uri_for(args.results)
    if tracking_uri.startswith(("http://", "https://")):
        raise BenchError(
            f"--tracking-uri {tracking_uri} is a tracking server, which has its own UI: open "
            f"{tracking_uri} in a browser"
        )
    database = sqlite_path(tracking_uri)
    if database is not None and not database.is_file():
        raise BenchError(
            f"no MLflow tracking store at {database}; run `bench run --study NAME` first, or "
            "pass the --tracking-uri the study logged to"
        )
    if not 0 < args.port < 65536:
        raise BenchError(f"--port must be in 1..65535, got {args.port}")
    url_host = f"[{args.host}]" if ":" in args.host else args.host
    url = f"http://{url_host}:{args.port}"
    if args.study:
        from mlflow import MlflowClient

        experiment = MlflowClient(tracking_uri).get_experiment_by_name(args.study)
        if experiment is None:
            raise BenchError(
                f"no experiment {args.study!r} in {tracking_uri}; run `bench run --study "
                f"{args.study}` first"
            )
        url = f"{url}/#/experiments/{experiment.experiment_id}/runs?{runs_page_query(experiment)}"
    if args.host not in LOOPBACK:
        print(
            f"warning: binding to {args.host} makes the MLflow UI (no authentication) "
            "reachable from other machines",
            file=sys.stderr,
        )
    print(f"MLflow UI on {tracking_uri}: {url}  (Ctrl-C stops it)", flush=True)
    # MLflow's server also starts job-runner processes for its GenAI features; browsing runs
    # needs none of them (set MLFLOW_SERVER_ENABLE_JOB_EXECUTION=true to have them).
    os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    command = ui_command(tracking_uri, args.host, args.port)
    os.execv(command[0], command)  # replaces this process: Ctrl-C reaches MLflow directly
