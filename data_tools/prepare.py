"""Corpus preparation from a checkout, without installing the `sos` command:

    python data_tools/prepare.py INPUTS... --out DIR [options]   (same as `sos prepare`)

The Polars pipeline itself lives in the package (python/sos_rs/data/) so that `sos prepare`
works after `pip install`; this file is only an entry point.
"""

import sys

from sos_rs.cli import main

if __name__ == "__main__":
    sys.exit(main(["prepare", *sys.argv[1:]]))
