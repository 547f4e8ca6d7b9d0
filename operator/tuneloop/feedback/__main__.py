import sys

from tuneloop.feedback.server import main

sys.exit(main())
