"""`python -m bing_bert_pld.report`: runs the report command (cli.main)."""

import sys

from .cli import main

sys.exit(main())
