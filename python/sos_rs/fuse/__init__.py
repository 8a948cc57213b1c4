"""`sos fuse`: graft one dense model's attention into another's layers at the weight level
(SPEC §6.5). `align` maps the donor's hidden space onto the host's (Procrustes on the embeddings
of shared tokens), `graft` builds the fused model; `cli/fuse.py` adds healing and the report."""

from .align import Alignment, FuseError, align_embeddings, shared_rows
from .graft import GraftReport, graft_attention, layer_map

__all__ = [
    "Alignment",
    "FuseError",
    "GraftReport",
    "align_embeddings",
    "graft_attention",
    "layer_map",
    "shared_rows",
]
