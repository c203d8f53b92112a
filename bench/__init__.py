"""casdm-bench: the harness (datasets' evaluation, studies, Optuna runner, MLflow tracking, tables, CLI)."""
