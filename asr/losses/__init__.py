"""Training losses. Importing a loss module registers its backends (see ``asr.registry``)."""
