"""`python -m kronypt ...` runs the `kronypt` command line (also under `torchrun -m kronypt train ...`)."""

from kronypt.cli.main import main

if __name__ == "__main__":
    main()
