"""``python -m rlar.reward.server``: the remote reward server (``rlar.reward.remote.server``)."""

from rlar.reward.remote.server import main

if __name__ == "__main__":
    raise SystemExit(main())
