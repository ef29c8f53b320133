"""The alignment chapter: SFT, a Bradley–Terry reward model, PPO with a KL leash (InstructGPT) and DPO,
on a toy task whose "human" is a program (``align.task``). Objectives are pure functions
(``objectives``), steps are pure ``step(state, batch) -> (state, metrics)`` (``steps``), sharded by the
same logical-axis rules as pretraining (``setup``); ``run`` holds the side effects of ``lineage align``."""
