"""`python -m alseg` (and `torchrun --nproc_per_node=N -m alseg ...`): the `alseg` command."""

from alseg.cli import main

if __name__ == "__main__":
    main()
