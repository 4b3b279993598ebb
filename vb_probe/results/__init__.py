"""Typed probe results, by kind: what the CLI writes, the demo reports, the notebooks plot and the explorer reads.

- :mod:`.scores`: :class:`HeadScores`, every head scored on one group of queries (counts, so nothing is lost);
- :mod:`.grounding`: :class:`GroundingResult` (entity grounding, Figure 3) and :class:`SyntacticResult` (Figure 4);
- :mod:`.interventions`: :class:`AttributionResult`, :class:`CausalResult` and the heads an ablation takes;
- :mod:`.files`: the files of a run (CSV text and reading, ``run.json``, versions, the checks before a run).

Head names (``L{layer}H{head}``) are :mod:`vb_probe.heads`'. No engine, torch or transformers import here.
"""

from vb_probe.heads import Head, SelectedHead, head_label
from vb_probe.results.files import (
    check_result_folder,
    check_scores_shape,
    csv_text,
    read_run,
    read_table,
    save_run,
    versions,
)
from vb_probe.results.grounding import MAX_PANELS, SYNTACTIC_COLUMNS, GroundingResult, SyntacticResult
from vb_probe.results.interventions import ATTRIBUTION_COLUMNS, AttributionResult, CausalResult, top_heads_from_csv
from vb_probe.results.scores import BASELINES, DIGITS, ENTITY_COLUMNS, HeadScores, selected_head

__all__ = ["ATTRIBUTION_COLUMNS", "BASELINES", "DIGITS", "ENTITY_COLUMNS", "MAX_PANELS", "SYNTACTIC_COLUMNS",
           "AttributionResult", "CausalResult", "GroundingResult", "Head", "HeadScores", "SelectedHead",
           "SyntacticResult", "check_result_folder", "check_scores_shape", "csv_text", "head_label", "read_run",
           "read_table", "save_run", "selected_head", "top_heads_from_csv", "versions"]
