# kvgraph's custom MAX kernels (see kvgraph/max/custom.py, which builds this package).
