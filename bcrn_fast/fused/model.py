"""BCRNFused: the whole network on fused operators, and ``fuse_`` for a live model."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from bcrn_fast.fused.base import FusedMixin
from bcrn_fast.fused.modules import FusedBCB, FusedBSConv
from bcrn_fast.model import BCRN, MIN_SIZE
from bcrn_fast.ops import bsconv as bsconv_op
from bcrn_fast.ops import esa as esa_op
from bcrn_fast.ops._common import ACT_GELU, check_kernel_dtype, empty_nhwc
from bcrn_fast.validation import check_image_batch


class BCRNFused(FusedMixin, BCRN):
    """BCRN with fused kernels: same constructor, same state dict, same output.

    ``BCRNFused(scale, backend="auto", precision="ieee")``; ``backend`` is
    ``"auto"`` (Triton on CUDA, the fused ``torch`` dataflow on the CPU),
    ``"triton"`` or ``"torch"``; ``precision`` is the fp32 dot mode
    (``"ieee"`` or ``"tf32"``). Half precision: ``model.half()`` /
    ``model.to(torch.bfloat16)`` and a matching input (half storage, fp32
    accumulation). The model is built with ``requires_grad=False`` parameters
    (inference); with gradients required it runs the differentiable reference.

    Dataflow (docs/fused-ops.md): conv1, then per BCB 5 launches writing the
    pre-CCA maps ``u_k`` into one ``[N, 384, H, W]`` buffer (no concat copy) and
    their CCA scales ``s_k`` into one ``[N, 384]`` fp32 tensor (no cat; one
    zero fill of the six merges' counters per forward), the CCA scales applied
    on load by each consumer, conv2 + GELU + residual and the upsampler with
    its pixel shuffle.
    """

    def __init__(
        self,
        scale: int = 4,
        num_features: int = 64,
        num_blocks: int = 6,
        *,
        backend: str = "auto",
        precision: str = "ieee",
    ) -> None:
        super().__init__(scale, num_features, num_blocks)
        self._init_fused(backend, precision)
        self._adopt_children()
        self.requires_grad_(False)

    @classmethod
    def from_reference(cls, module: nn.Module, backend: str = "auto", precision: str = "ieee") -> BCRNFused:
        """A BCRNFused sharing ``module``'s parameters (a :class:`BCRN`)."""
        return super().from_reference(module, backend, precision)  # type: ignore[return-value]

    def _adopt_children(self) -> None:
        for name in ("conv1", "conv2"):
            child = self._modules[name]
            if not isinstance(child, FusedBSConv):
                self._modules[name] = FusedBSConv.from_reference(child, self.backend, self.precision)
        for k in range(1, self.num_blocks + 1):
            name = f"convNext{k}"
            child = self._modules[name]
            if not isinstance(child, FusedBCB):
                self._modules[name] = FusedBCB.from_reference(child, self.backend, self.precision)

    def _pack_params(self) -> Any:
        return self.upsample_block.parameters()  # the model's own pack is the upsampler's (not all 225)

    def _pack(self, dtype: torch.dtype) -> Any:
        return bsconv_op.pack_upsampler(self.upsample_block, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_image_batch(x, self.conv1.pw.weight, min_size=MIN_SIZE)
        check_kernel_dtype(x, "image batch")
        if self._needs_grad(x):
            return BCRN.forward(self, x)
        n, _, h, w = x.shape
        c = self.conv1.pw.out_channels
        f0 = self.conv1.run(x)
        feats = empty_nhwc(n, c * self.num_blocks, h, w, x.dtype, x.device)  # u_1..u_6, never concatenated
        scales = torch.empty((n, c * self.num_blocks), dtype=torch.float32, device=x.device)  # s_1..s_6, no cat
        # the six CCA merges' workspace: one allocation, one zero fill of its counters per forward
        workspaces = esa_op.apply_workspaces(self.num_blocks, n, h, w, x.dtype, self.precision, x.device)
        inp, in_scale = f0, None
        for k, block in enumerate(self.blocks()):
            s = block.run(inp, in_scale, feats, k * c, scale=scales[:, k * c : (k + 1) * c], workspace=workspaces[k])
            inp, in_scale = feats[:, k * c : (k + 1) * c], s
        g = self.conv2.run(feats, in_scale=scales, residual=f0, act=ACT_GELU)
        return bsconv_op.bsconv_packed(g, self._packed(x.dtype), precision=self.precision, backend=self._backend_for(x))


def fuse_(model: nn.Module, backend: str = "auto", precision: str = "ieee") -> nn.Module:
    """Swap fused modules into ``model`` in place, sharing its parameters.

    A :class:`BCRN` (or any module containing reference BCRN blocks) has each
    reference submodule replaced by its fused counterpart; a whole ``BCRN``
    passed directly cannot change class in place, so its class is swapped to
    :class:`BCRNFused` (same parameters, same state dict). Returns ``model``.
    """
    from bcrn_fast.fused import FUSED_CLASSES

    if isinstance(model, FusedMixin):
        return model
    if type(model) is BCRN:
        fused = BCRNFused.from_reference(model, backend, precision)
        model.__class__ = BCRNFused
        model.__dict__.update(fused.__dict__)
        return model
    for name, child in list(model.named_children()):
        cls = FUSED_CLASSES.get(type(child))
        if cls is not None:
            setattr(model, name, cls.from_reference(child, backend, precision))
        else:
            fuse_(child, backend, precision)
    return model
