"""MLflow for the pipeline and the sweeps: the store and its runs, the model registry, the team's server.

==============  =========================================================
``store``       the tracking store, experiments, runs, datasets, UI links
``registry``    logged and registered models, ranking, the champion alias
``promote``     ``python -m vae.tracking.promote``: move the champion alias
``server``      ``python -m vae.tracking.server``: MLflow on PostgreSQL
==============  =========================================================

Imports only the library (:mod:`vae`), never the pipeline or the sweeps.
"""
