"""The federation on Flower: a ClientApp run by each hospital's SuperNode, a ServerApp that
aggregates, and the helpers they share (wire format, run state, strategy)."""
