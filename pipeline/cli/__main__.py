"""`python -m pipeline.cli` runs the keymail command line."""

from pipeline.cli import main

main()
