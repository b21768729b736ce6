"""``python -m recexp.compare RUN_DIR [RUN_DIR ...] --out OUT_DIR``."""
from recexp.compare.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
