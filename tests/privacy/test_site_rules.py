"""Rules a hospital sets in its own node config and its node enforces: a train message from a
run that breaks one is refused before anything is trained, naming the site and the rule."""

import pytest
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict

from fedfms.errors import FedfmsError
from fedfms.federated import protocol as P
from fedfms.federated.client_app import app
from fedfms.federated.protocol import SiteFailure
from fedfms.federated.wire import to_record
from fedfms.models import build_model, trainable_state
from fedfms.privacy.policy import broken_rule, site_rules

pytestmark = pytest.mark.usefixtures("task_identity")


def _train(config, node_config: dict, secure_claim: bool = False) -> Message:
    """A train message as the server sends it (here claiming SecAgg+ in the site's own record,
    which the site's ClientApp overwrites), answered by the real ClientApp in this process."""
    content = RecordDict({P.CONFIG: ConfigRecord({P.RUN_CONFIG: config.model_dump_json(), "server-round": 1}),
                          P.ARRAYS: to_record(trainable_state(build_model(config.model, seed=0))),
                          P.SITE: ConfigRecord({P.VIA_SECURE_AGGREGATION: secure_claim})})
    context = Context(run_id=1, node_id=5, node_config={"site-worker": False, **node_config}, state=RecordDict(),
                      run_config={})
    return app(Message(content, dst_node_id=5, message_type=MessageType.TRAIN), context)


@pytest.mark.parametrize(("rules", "privacy", "refusal"), [
    ({"require-privacy-level": "record"}, {}, "require-privacy-level: the run's privacy.level is none, the site accepts record"),
    ({"min-noise-multiplier": 1.5}, {"privacy.level": "record", "privacy.noise_multiplier": 1.0},
     "min-noise-multiplier: the run's noise multiplier is 1 (privacy.level record), the site requires at least 1.5"),
    ({"max-epsilon": 8}, {"privacy.level": "client"}, "max-epsilon: the run's privacy.target_epsilon is None"),
    ({"max-epsilon": 0.01}, {"privacy.level": "record"}, "max-epsilon: this round would bring the site's epsilon to"),
    ({"require-secure-aggregation": True}, {}, "require-secure-aggregation: this update would leave without SecAgg+"),
])
def test_a_run_that_breaks_a_sites_rule_is_refused_before_training(rules, privacy, refusal, federation, tmp_path,
                                                                    run_config, capfd):
    state = tmp_path / "state"
    config = run_config(federation, tmp_path / "run").with_overrides({"train.state_dir": str(state), **privacy})
    node = {"data-dir": str(federation / "site-A"), **rules}
    with pytest.raises(SiteFailure) as failure:
        _train(config, node, secure_claim=True)  # the server's claim of SecAgg+ does not count
    assert str(failure.value).startswith(f"site-A: refused by the site's rule {refusal}"), str(failure.value)
    assert "the train message was not answered: site-A: refused by the site's rule" in capfd.readouterr().err
    assert not state.exists(), "something was trained or accounted before the refusal"


def test_a_run_within_the_sites_rules_is_trained(federation, tmp_path, run_config):
    config = run_config(federation, tmp_path / "run").with_overrides(
        {"train.state_dir": str(tmp_path / "state"), "privacy.level": "record", "privacy.noise_multiplier": 1.5})
    node = {"data-dir": str(federation / "site-A"), "require-privacy-level": "record,client",
            "min-noise-multiplier": "1.2", "max-epsilon": "1000"}
    metrics = _train(config, node).content[P.METRICS]
    assert metrics[P.EPSILON] > 0 and metrics[P.EPSILON_NEXT] > metrics[P.EPSILON]


def test_wrong_rule_values_are_the_nodes_configuration_errors():
    assert site_rules({"max-epsilon": "3", "require-secure-aggregation": "true", "other": 1}) == {
        "max-epsilon": 3.0, "require-secure-aggregation": True}
    for bad in ({"max-epsilon": "-1"}, {"require-secure-aggregation": "yes"}, {"require-privacy-level": "strong"}):
        with pytest.raises(FedfmsError, match=f"node config {next(iter(bad))}="):
            site_rules(bad)


def test_rules_without_privacy_in_the_run_are_broken(run_config, federation, tmp_path):
    config = run_config(federation, tmp_path / "run")
    assert broken_rule({"max-epsilon": 3.0}, config, False, None).startswith("max-epsilon: the run has no")
    assert broken_rule({}, config, False, None) is None
