"""``python -m recexp [overrides]`` / ``recexp [overrides]``."""
import hydra
from omegaconf import DictConfig

from recexp.run import run


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    return run(cfg)


if __name__ == "__main__":
    main()
