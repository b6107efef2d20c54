"""The soak run (`make soak`, `python -m soak --minutes N`): minutes of mixed traffic through the local
stack with faults injected on a schedule, then a reconciliation of what the senders were told against
what CARTO ran and what the events topic said. Not part of `make test`; its last table is kept in
soak/last-run.md and quoted in the README's "Delivery guarantees".
"""
