"""`python -m bench` (also what `torchrun -m bench` starts)."""

from bench.cli import console

console()
