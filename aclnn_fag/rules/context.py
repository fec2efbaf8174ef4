"""One validated call as the rules see it: its arguments by parameter name (normalised by
:mod:`.arguments`) and the facts derived from them, each computed when a rule first needs
it (a rule only asks for what the rules before it made safe to compute). The names are
those of :class:`aclnn_fag.call.FagCall`, so a call that passed the other rules can be
given to the data rules as it is (:func:`for_call`).
"""

from __future__ import annotations

from functools import cached_property

from ..semantics.sparse import band_index, normalize_tokens
from ..seqlens import seq_info, with_device_padding, without_padding

__all__ = ["Context", "for_call"]


class Context:
    def __init__(self, args: dict, check_data: bool, release=None) -> None:
        self.__dict__.update(args)
        self.check_data = check_data
        self.release = release      # the CANN release whose rules apply (aclnn_fag.releases)
        self.qlen, self.kvlen = args["actual_seq_qlen"], args["actual_seq_kvlen"]

    @cached_property
    def heads(self):
        """head_num, None meaning query.shape[1]."""
        if self.head_num is None and self.query.ndim >= 2:
            return self.query.shape[1]
        return self.head_num

    d = property(lambda self: self.query.shape[2])
    dk = property(lambda self: self.key.shape[2])
    dv = property(lambda self: self.value.shape[2])
    t1 = property(lambda self: self.query.shape[0])
    n1 = property(lambda self: self.query.shape[1])
    t2 = property(lambda self: self.key.shape[0])
    n2 = property(lambda self: self.key.shape[1])

    @cached_property
    def seqs(self):
        """The batches: end-of-data padding entries are no batches (docs/releases.md)."""
        return seq_info(without_padding(self.qlen), without_padding(self.kvlen))

    @cached_property
    def device_ends(self):
        """(q ends, kv ends) the device is given: the release's end-of-data padding appended
        where the binding adds it (seqlens.with_device_padding)."""
        return with_device_padding(self.qlen, self.kvlen, self.t1, self.t2, self.release)

    @cached_property
    def pre_eff(self):
        return normalize_tokens(self.sparse_mode, self.pre_tokens, self.next_tokens)[0]

    @cached_property
    def next_eff(self):
        return normalize_tokens(self.sparse_mode, self.pre_tokens, self.next_tokens)[1]

    @cached_property
    def band_index(self):
        return band_index(self.sparse_mode, self.seqs)

    @cached_property
    def sampler(self):
        """The bounded reader of device-resident data, one per validated call."""
        from .data_rules import Sampler
        return Sampler()


def for_call(call) -> Context:
    """A context over a validated call (a FagCall): the data rules' view of it."""
    c = Context.__new__(Context)
    c.__dict__.update(call.__dict__)
    c.check_data = True
    return c
