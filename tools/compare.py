"""Compare active-learning runs (strategies x seeds): table (console, CSV, Markdown) and AP-vs-cost plot.

    python tools/compare.py runs/my_experiment [--metric mask_AP] [--group-by strategy] [--out DIR]

Same as the ``alseg-compare`` console script (alseg.tools.compare).
"""

import sys

from alseg.tools.compare import main

if __name__ == "__main__":
    sys.exit(main())
