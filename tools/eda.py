"""Class counts, images per class and instance sizes of a COCO JSON, with a bar plot (instances and
images per class; classes without any instance left out, their number in the title).

    python tools/eda.py --ann FILE [--classes person cat ...] [--sort count|name|id] --out counts.png

See alseg.tools.eda.
"""

import sys

from alseg.tools.eda import main

if __name__ == "__main__":
    sys.exit(main())
