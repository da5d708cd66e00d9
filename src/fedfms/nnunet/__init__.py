"""FednnU-Net on nnU-Net v2 itself (``nnunetv2``): federated fingerprinting and planning, nnU-Net's
preprocessing, its trainer's recipe for one local round, and its sliding-window inference.

The flow, as published federated nnU-Net work runs it:

1. each site fingerprints its own training split (:mod:`.fingerprint`, with nnunetv2's
   cropping and foreground sampling); only statistics leave the site;
2. the server merges the fingerprints and plans once with nnunetv2's ``ExperimentPlanner``
   (:mod:`.planning`); the plans travel as JSON and are saved with every checkpoint;
3. each site preprocesses its cases with nnunetv2's ``DefaultPreprocessor`` (:mod:`.preprocess`)
   and trains one local epoch per round with ``nnUNetTrainer``'s recipe (:mod:`.trainer`);
   the server averages all weights (FedAvg, weighted by samples);
4. evaluation and prediction use nnunetv2's ``nnUNetPredictor`` (sliding window, Gaussian
   weighting, optional mirroring; :mod:`.segmenter`).
"""
