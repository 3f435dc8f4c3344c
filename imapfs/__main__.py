from .mount import main
import sys

sys.exit(main())
