"""Floor 1: protocols and phases, the runner state machine, pacer, diary and questionnaire instruments."""
