"""MLflow for the pipeline and the sweeps: the store and its runs, the model registry, the team's server.

=================  ======================================================
``store``          reaching the tracking store; one line when it does not answer
``runs``           the experiment, a run per stage execution, its name and tags, UI links
``datasets``       the prepared data a run read, as MLflow datasets
``logged_models``  the decoder and encoder as MLflow models (exported graphs)
``registry``       registered models, ranking, the champion alias (no torch)
``promote``        ``python -m vae.tracking.promote``: move the champion alias
``server``         ``python -m vae.tracking.server``: MLflow on PostgreSQL
``postgres``       the server's own PostgreSQL cluster, in one folder
=================  ======================================================

Imports only the library (:mod:`vae`), never the pipeline or the sweeps.
"""
