"""`python -m soak --minutes N`."""

from __future__ import annotations

import argparse
import sys

from soak.run import Options, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m soak", description=__doc__)
    parser.add_argument("--minutes", type=float, default=10.0, help="how long traffic flows (default 10)")
    parser.add_argument("--rate", type=float, default=4.0, help="new deliveries per second (default 4)")
    parser.add_argument("--senders", type=int, default=32, help="deliveries in flight at most (default 32)")
    parser.add_argument("--seed", type=int, default=7, help="seed of the traffic mix")
    parser.add_argument("--out", default="soak/last-run.md", help="where the Markdown table goes")
    parser.add_argument("--ledger", choices=("sqlite", "firestore"), default="sqlite",
                        help="the ledger store: the embedded SQLite file (default) or Firestore on its emulator")
    args = parser.parse_args(argv)
    return run(Options(minutes=args.minutes, rate=args.rate, senders=args.senders, seed=args.seed, out=args.out,
                       ledger=args.ledger))


if __name__ == "__main__":
    sys.exit(main())
