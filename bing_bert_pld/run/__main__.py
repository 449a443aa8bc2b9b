"""`python -m bing_bert_pld.run`: the run directory's command line (run/info.py)."""

import sys

from .info import main

sys.exit(main())
