"""Tensors travel packed: one flat array per record instead of one Flower object per tensor, and
back exactly; the server's exchange packs what it sends and unpacks what it receives."""

import numpy as np
import pytest
import torch
from fake_grid import FakeGrid
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

from fedfms.config import ModelConfig
from fedfms.federated import packing
from fedfms.federated import protocol as P
from fedfms.federated.exchange import exchange
from fedfms.federated.packing import LAYOUT_SUFFIX, PACKED, UnreadableArrays, pack_arrays, unpack_arrays
from fedfms.federated.wire import from_record, to_record
from fedfms.models import build_model, trainable_state

pytestmark = pytest.mark.usefixtures("task_identity")


def _content(record: ArrayRecord) -> RecordDict:
    return RecordDict({P.ARRAYS: record, P.CONFIG: ConfigRecord({"server-round": 1})})


def test_a_model_update_travels_as_one_array_and_comes_back_exactly():
    state = trainable_state(build_model(ModelConfig(backbone="tiny", mode="msa", num_classes=1, image_size=64,
                                                    pretrained=False), seed=0))
    for dtype in (torch.float32, torch.float16):
        content = _content(to_record(state, dtype))
        objects_before = len(get_all_nested_objects(content))
        pack_arrays(content)
        assert list(content[P.ARRAYS].keys()) == [PACKED] and P.ARRAYS + LAYOUT_SUFFIX in content
        assert len(get_all_nested_objects(content)) < objects_before / 40  # Flower moves each in its own request
        unpack_arrays(content)
        assert set(content.keys()) == {P.ARRAYS, P.CONFIG}
        back = from_record(content[P.ARRAYS])
        assert list(back) == list(state)  # names in their order
        assert all(back[k].dtype == dtype and torch.equal(back[k], state[k].to(dtype)) for k in state)


def test_single_arrays_and_mixed_dtypes_travel_as_they_are():
    single = ArrayRecord({"w": Array(np.ones(3, np.float32))})
    mixed = ArrayRecord(numpy_ndarrays=[np.ones(2, np.float32), np.ones(2, np.float16)])
    content = RecordDict({"a": single, "b": mixed})
    pack_arrays(content)
    assert set(content.keys()) == {"a", "b"} and list(content["a"].keys()) == ["w"] and len(content["b"]) == 2


def test_a_layout_that_does_not_fit_its_array_is_refused_naming_the_record():
    content = _content(to_record({"a": torch.zeros(4), "b": torch.zeros(2, 3)}))
    pack_arrays(content)
    content[P.ARRAYS + LAYOUT_SUFFIX]["shapes"] = "[[4], [2, 4]]"
    with pytest.raises(UnreadableArrays, match="record 'arrays': its layout describes 12 values of 2 tensors, "
                                               "the packed array holds 10"):
        unpack_arrays(content)


def test_the_exchange_sends_packed_and_unreadable_replies_become_errors_of_their_node(monkeypatch):
    real_pack = packing._pack
    state = {"a": torch.arange(4.0), "b": torch.ones(2, 3)}
    good = _content(to_record(state))
    pack_arrays(good)
    broken = _content(to_record(state))
    pack_arrays(broken)
    broken[P.ARRAYS + LAYOUT_SUFFIX]["names"] = ["a"]
    grid = FakeGrid([1, 2, 3], {1: good, 2: broken, 3: good})
    sent = [Message(_content(to_record(state)), dst_node_id=n, message_type=MessageType.TRAIN) for n in (1, 2)]
    replies = dict(exchange(grid, sent, timeout=5.0))
    assert all(list(m.content[P.ARRAYS].keys()) == [PACKED] for m in grid.sent.values())
    shared = to_record(state)
    one_record_for_all = [Message(_content(shared), dst_node_id=n, message_type=MessageType.TRAIN) for n in (1, 2, 3)]
    calls = []
    monkeypatch.setattr(packing, "_pack", lambda record: calls.append(record) or real_pack(record))
    exchange(grid, one_record_for_all, timeout=5.0)
    assert calls == [shared]  # packed once for all three messages, not once per message
    assert one_record_for_all[0].content[P.ARRAYS] is one_record_for_all[2].content[P.ARRAYS]  # and held once
    assert {k: v.tolist() for k, v in from_record(replies[1].content[P.ARRAYS]).items()} == \
        {k: v.tolist() for k, v in state.items()}
    assert replies[2].has_error() and "unreadable reply: record 'arrays'" in replies[2].error.reason
