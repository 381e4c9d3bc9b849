"""Sweeps over params.yaml keys on Ray Tune: ``python -m vae.sweep SWEEP.yaml``.

==============  =========================================================
``spec``        the sweep file, checked against params.yaml and dvc.yaml
``tune``        the trial (trained and evaluated as the DVC stages do) and the driver
``command``     the command line
==============  =========================================================
"""
