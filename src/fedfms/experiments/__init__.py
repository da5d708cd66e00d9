"""Experiments built on the trainers: the matrix of models x unseen clients (the paper's Table 1),
the demo on top of it, and the reports of finished runs."""
