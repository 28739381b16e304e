"""`python -m regsweep`: the regsweep command, for an environment whose scripts are not on PATH."""

from regsweep.cli import main

if __name__ == "__main__":
    main()
