"""How a message's tensors travel: each ``ArrayRecord`` of several arrays of one dtype as one flat
array (``packed``) plus a ``<key>.layout`` ConfigRecord of their names and shapes.

Why: Flower moves every array of a message as its own object, one HTTP request each way on each
hop (ServerApp - SuperLink - SuperNode - ClientApp), so a FedMSA update of 150-300 tensors took
150-300 requests per hop, seconds on a busy machine for kilobytes of data. Packed, a record
takes one request per 5 MB chunk (Flower's chunk size). The ServerApp's exchange
(:mod:`fedfms.federated.exchange`) and the ClientApp (:mod:`fedfms.federated.client_app`) pack
what they send and unpack what they receive; everything else sees ordinary records. Imports
numpy and Flower only (the ClientApp process stays light).
"""

from __future__ import annotations

import json
import math

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from fedfms.errors import FedfmsError


class UnreadableArrays(FedfmsError, ValueError):
    """A packed record whose layout does not fit its array; the message names the record."""


LAYOUT_SUFFIX = ".layout"
PACKED = "packed"


def _pack(record: ArrayRecord) -> tuple[ArrayRecord, ConfigRecord]:
    arrays = [record[name].numpy() for name in record.keys()]
    flat = np.concatenate([a.reshape(-1) for a in arrays])
    layout = ConfigRecord({"names": list(record.keys()), "shapes": json.dumps([list(a.shape) for a in arrays])})
    return ArrayRecord({PACKED: Array(flat)}), layout


def pack_arrays(content: RecordDict,
                packed: dict[int, tuple[ArrayRecord, ArrayRecord, ConfigRecord]] | None = None) -> None:
    """Replace, in place, every ArrayRecord of ``content`` that holds several arrays of one
    dtype by one flat array and its ``<key>.layout`` (see the module docstring). ``packed``:
    records already packed (the record, its flat array and layout), by ``id``: pass one dict for
    messages that share a record, such as the global model sent to every site, so that it is
    packed and held once."""
    packed = {} if packed is None else packed
    for key, record in list(content.array_records.items()):
        if len(record) > 1 and len({record[name].dtype for name in record.keys()}) == 1:
            if id(record) not in packed:  # the record is kept too, so that its id is not reused meanwhile
                packed[id(record)] = (record, *_pack(record))
            _, flat, layout = packed[id(record)]
            content[key] = flat
            content[key + LAYOUT_SUFFIX] = layout


def unpack_arrays(content: RecordDict) -> None:
    """Undo :func:`pack_arrays` in place; a layout that does not fit its array raises
    :class:`UnreadableArrays` naming the record."""
    for key in [k for k in content.config_records if k.endswith(LAYOUT_SUFFIX)]:
        name = key.removesuffix(LAYOUT_SUFFIX)
        try:
            layout = content[key]
            names, shapes = list(layout["names"]), [tuple(s) for s in json.loads(str(layout["shapes"]))]
            flat = content[name][PACKED].numpy()
        except (KeyError, TypeError, ValueError) as err:
            raise UnreadableArrays(f"record {name!r}: unreadable packed arrays ({type(err).__name__}: {err})") from None
        sizes = [math.prod(shape) for shape in shapes]
        if len(names) != len(shapes) or sum(sizes) != flat.size:
            raise UnreadableArrays(f"record {name!r}: its layout describes {sum(sizes)} values of {len(names)} "
                                   f"tensors, the packed array holds {flat.size}")
        pieces = np.split(flat, np.cumsum(sizes)[:-1])
        content[name] = ArrayRecord({n: Array(np.ascontiguousarray(p.reshape(shape)))
                                     for n, p, shape in zip(names, pieces, shapes, strict=True)})
        del content[key]
