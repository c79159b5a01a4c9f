"""`kind: pruning_at_init`: IMP and pruning at initialisation side by side (Frankle et al. 2021). Each trial's
`prune.method` chooses its run: `imp` an IMP run (`trainables.imp.ImpRun`), a method at initialisation
(`lth list methods`) a run whose every level's mask is chosen before training (`trainables.at_init.AtInitRun`)
at IMP's weights remaining for that level. Both write the same levels table, with a `method` column, so a
sweep with `prune.method` as an axis draws IMP and every baseline on one figure per setting."""

from __future__ import annotations

from orchestrator.workflows.imp import ImpWorkflow
from trainables.catalog import METHODS


class PruningAtInitWorkflow(ImpWorkflow):
    name = "pruning_at_init"
    description = "IMP runs and masks chosen at initialisation"

    def make_run(self, cfg, workdir, reporter, dense_dir, masks_from):
        from trainables.at_init import AtInitRun
        from trainables.imp import ImpRun

        run = AtInitRun if METHODS.meta(cfg.prune.method).get("at_init") else ImpRun
        return run(cfg, workdir, reporter, dense_dir=dense_dir)


PRUNING_AT_INIT = PruningAtInitWorkflow()
