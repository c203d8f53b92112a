"""casdm-bench: the harness (evaluation, studies, Optuna runner, MLflow tracking, tables, CLI)."""
