"""`python -m msc_platform.cluster up|down|status` (what `make cluster-up/down` run)."""
import sys

from msc_platform.cluster.local import main

sys.exit(main())
