"""Cheaper attributions to compare Shapley values with (the paper's Table 1 baselines); pure torch/numpy.

- ``aggregate``: per-image scores to per-contributor credit, joined by image id (mean, max, sum);
- ``similarity``: pixel and instrument-feature cosine similarity of generated vs training images;
- ``gradients``: one cache of projected per-example gradients at θ* (loss, D-TRAK output, journey);
- ``influence``: TRAK, relative and renormalised IF, D-TRAK and Journey-TRAK from that cache;
- ``heuristics``: data-size share, own-data property and confidence, leave-one-out.

``stages/baselines.py`` wires them to a work directory and the ``attributions`` table.
"""
