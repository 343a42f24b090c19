import sys

from bench.perf.run import main

sys.exit(main())
