"""`python -m pipeline.cli` runs the keymail command line."""

from pipeline.cli import main

# Guarded: worker processes import the main module again under another name.
if __name__ == "__main__":
    main()
