"""What runs inside a training run, standard library only.

`runner.py` is started by its file path and `trainyard/` is the `report()` module packages import;
this folder (and nothing else of ours) is on the run process's path.
"""
