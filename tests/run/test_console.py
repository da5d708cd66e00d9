"""The console shows fedfms's round lines and Flower's real warnings, not its expected noise."""

import logging

from fedfms.run.log import console_logging


def test_flower_noise_is_filtered_and_real_warnings_pass(caplog):
    console_logging()
    flower = logging.getLogger("flwr")
    with caplog.at_level(logging.INFO, logger="flwr"):
        flower.warning("DEPRECATED FEATURE: The `run_simulation` function is deprecated and will be removed")
        flower.warning("Manually terminating %s", "ClientAppActor")
        flower.info("Starting Flower ServerApp")
        flower.warning("node 7 did not reply")
    assert [r.getMessage() for r in caplog.records] == ["node 7 did not reply"]
