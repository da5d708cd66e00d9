"""Differential privacy and the rules a site enforces (docs/privacy.md).

- :mod:`~fedfms.privacy.dpsgd`: record-level DP at a site, DP-SGD with Opacus where the unit is
  one case (patient);
- :mod:`~fedfms.privacy.accountant`: each site's own accountant (Opacus' RDP), kept on its disk;
- :mod:`~fedfms.privacy.client_level`: client-level DP with Flower's fixed-clipping strategy and
  its RDP accountant, kept with the run;
- :mod:`~fedfms.privacy.budget`: the run's epsilon budget;
- :mod:`~fedfms.privacy.policy`: what a site accepts, set in its own node config.
"""
