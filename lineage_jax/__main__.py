import sys

from lineage_jax.cli import main

sys.exit(main())
