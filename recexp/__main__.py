"""``python -m recexp [overrides]`` / ``recexp [overrides]``."""
import sys

import hydra
from omegaconf import DictConfig

from recexp.config import check_overrides
from recexp.locks import mark_launcher
from recexp.run import run
from recexp.sweeps import register_resolver


def experiment(cfg: DictConfig) -> float:
    return run(cfg)


app = hydra.main(version_base="1.3", config_path="pkg://recexp.conf", config_name="config")(experiment)


def main() -> None:
    """Overrides Hydra cannot read get a quoting hint; job folders get short names; parallel workers
    watch this process. A multirun with failed jobs exits 1 (``recexp.sweeps.FailureSummary``)."""
    check_overrides(sys.argv[1:])
    register_resolver()
    mark_launcher()
    app()


if __name__ == "__main__":
    main()
