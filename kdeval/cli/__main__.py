"""`python -m kdeval.cli`, the same as `kdeval` and `python -m kdeval`."""

from kdeval.cli import main

main()
