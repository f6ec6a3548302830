"""A metric against the pruning rate, per initial-selection strategy (mean ± std over seeds).

    python tools/pruning_curve.py runs/tfdp_pruning [--metric mask_AP] [--out DIR]

Writes pruning.csv, pruning.md and pruning.png; see alseg.tools.pruning_curve.
"""

import sys

from alseg.tools.pruning_curve import main

if __name__ == "__main__":
    sys.exit(main())
