"""Benchmarks of the gateway against the floor of its own stack: `python -m bench`.

Dev-only: kept out of the deployed source by .gcloudignore. See BENCHMARKS.md for what each
number means and how it was taken.
"""
