"""Local training and evaluation: one epoch on one client's data, Dice/IoU scoring."""
