"""`python -m thresher.cli ...` (what the tests' subprocesses run)."""

from thresher.cli import main

main()
