"""Split protocols. Each scenario turns a dataset into a :class:`~recexp.interfaces.Split` artifact."""
from recexp.scenarios.artifact import build_or_load
from recexp.scenarios.cold_item import ColdItemScenario
from recexp.scenarios.cold_user import ColdUserScenario
from recexp.scenarios.leave_one_out import LeaveOneOutScenario
from recexp.scenarios.random import RandomScenario
from recexp.scenarios.tallrec import TallRecScenario
from recexp.scenarios.temporal import TemporalScenario
from recexp.scenarios.time_blocks import TimeBlocksScenario

__all__ = ["build_or_load", "ColdItemScenario", "ColdUserScenario", "LeaveOneOutScenario", "RandomScenario", "TallRecScenario",
           "TemporalScenario", "TimeBlocksScenario"]
