import sys

from worker_agent.cli import main

sys.exit(main())
