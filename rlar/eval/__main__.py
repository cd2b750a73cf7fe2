"""``python -m rlar.eval``: the same command as ``rlar-eval`` (rlar/eval/cli.py)."""

from rlar.eval.cli import main

if __name__ == "__main__":
    main()
