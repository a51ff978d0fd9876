"""Prediction: the one predictor, whole scenes of any size, and regions of many scenes.

- `predictor`: `Predictor`, a model jitted once for prediction (and `logits`).
- `windows`: the sliding-window grid and blending, in memory or streamed.
- `rasters`: opening, checking, warping and reading a scene's GeoTIFFs.
- `stages`: the reader and writer threads around the model.
- `scene`: one scene end to end (`predict_scene`, `label_scene`).
- `outputs`: the Cloud-Optimized GeoTIFFs and the preview a scene writes.
- `scene_list`: the scenes of a region (list files, globs).
- `region`: many scenes: settings, checks, host shares, resume, summary
  (`predict_region`, what ``scripts/predict.py`` calls).
"""
