"""``python -m dask_oxigdal.coordination --self HOST:PORT --partner ... --data-dir DIR``."""

import sys

from dask_oxigdal.coordination.node import main

if __name__ == "__main__":
    sys.exit(main())
