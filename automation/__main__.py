"""``python -m automation``: the same command line as the ``automation`` script, for environments where
the script is not on the PATH."""

from __future__ import annotations

from automation.cli import main

if __name__ == "__main__":
    main()
