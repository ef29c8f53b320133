"""Run directories: Orbax checkpoints verified on restore (``checkpoint``), all-or-nothing writes of the
files beside them (``atomic``), one run at a time (``lock``) and what a run may write over (``rundir``)."""
