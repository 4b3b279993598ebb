"""``vb-probe demo``: the whole pipeline on the built-in world, ending in a report: the run (:mod:`.run`) and the
report it writes (:mod:`.report`)."""

from vb_probe.demo.report import emergence_verdict, patch_report, report
from vb_probe.demo.run import DEMO_RELATIONS, check_demo_folder, run_demo

__all__ = ["DEMO_RELATIONS", "check_demo_folder", "emergence_verdict", "patch_report", "report", "run_demo"]
