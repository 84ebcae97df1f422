"""The few-shot sweep (``scripts/fewshot_sweep.py``): Dice versus the number K of labelled subjects per training mode.

- :mod:`.plan`: the modes, the grid of K, label seeds and modes, and each run's overrides;
- :mod:`.backbone`: the pretrained backbone the runs share (checked, or pretrained once);
- :mod:`.cache`: what defines a run (``sweep_run.json``) and whether a finished run can be reused;
- :mod:`.grid`: training and evaluating the runs of the grid that are not done yet;
- :mod:`.rows`, :mod:`.ranking`, :mod:`.report`: the results table, the representative subjects ranked among the
  random draws, results.csv / results.md / dice_vs_k.png.
"""
