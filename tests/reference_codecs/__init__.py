"""A frozen copy of hvdat's numpy codecs as of commit a651f97 (before the torch rewrite), verbatim.

`tests/test_codec_reference.py` checks that the torch codecs in `hvdat.compression` encode the same bytes (sign,
ef-sign; natural with the same 23-bit random integers) and decode any payload to the same floats, and
`experiments/codecs.py` times both side by side. Do not edit these files: they are the specification.
"""

from .ef_sign import EFSignCompressor
from .natural import NaturalCompressor
from .sign import SignCompressor

__all__ = ["EFSignCompressor", "NaturalCompressor", "SignCompressor"]
