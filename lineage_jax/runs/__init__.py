"""Run directories: Orbax checkpoints verified on restore (``checkpoint``) and all-or-nothing
writes of the files beside them (``atomic``)."""
