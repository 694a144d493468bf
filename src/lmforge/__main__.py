"""`python -m lmforge ...` is `lmforge-train ...` (for environments whose scripts are off PATH)."""

from lmforge.cli import train_main

if __name__ == "__main__":
    train_main()
