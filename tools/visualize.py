"""Ground truth and predicted masks side by side for some validation images of a run, as a PNG grid.

    python tools/visualize.py runs/<experiment>/<run> [--round K] [--num-images 6] [--score-threshold 0.5]
                              [--out grid.png]

Each ground-truth object has one colour in both panels (predictions matched by mask IoU >= 0.5);
unmatched predictions are grey dashed "FP", objects no prediction matches are dashed "missed".
See alseg.tools.visualize.
"""

import sys

from alseg.tools.visualize import main

if __name__ == "__main__":
    sys.exit(main())
