"""Indexers: build the label tree (``LabelTree``) that the model ranks down.

``pifa`` embeds labels by their positive instances; ``build_kmeans_tree`` builds
the balanced hierarchical spherical k-means tree over such embeddings (PECOS).
"""

from qac.index.kmeans import binary_depth, build_kmeans_tree, pifa
from qac.index.tree import LabelTree

__all__ = ["LabelTree", "binary_depth", "build_kmeans_tree", "pifa"]
