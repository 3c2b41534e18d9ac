import sys

from fcn_fast.bench.cli import main

sys.exit(main())
