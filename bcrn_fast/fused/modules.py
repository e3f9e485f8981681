"""Drop-in fused replacements for the reference modules of :mod:`bcrn_fast.model`.

Each class subclasses the reference class it replaces, so constructor
arguments, parameter names/shapes and state-dict keys are the reference's own
(``load_state_dict`` works both ways), and adds ``backend`` / ``precision``
keyword arguments and ``from_reference(module)`` (shares the weights).

Launches per forward (Triton backend): FusedBSConv 1 or 2, FusedConvNeXtBlock 1,
FusedCCA 2 (statistics + MLP + sigmoid, then the scale) + the counters' zero
fill, FusedESA 4, FusedBCB 6 + the zero fill (5 inside BCRNFused, where the
consumer applies the CCA scale and one zero fill serves all six blocks).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from bcrn_fast.bsconv import BSConvU
from bcrn_fast.fused.base import FusedMixin
from bcrn_fast.model import ESA, MIN_SIZE, BluePrintShortcutBlock, CCALayer, ConvNeXtBlock
from bcrn_fast.ops import bcb_front as bcb_front_op
from bcrn_fast.ops import bsconv as bsconv_op
from bcrn_fast.ops import cca as cca_op
from bcrn_fast.ops import convnext as convnext_op
from bcrn_fast.ops import esa as esa_op
from bcrn_fast.ops._common import ACT_NONE, check_kernel_dtype, empty_nhwc
from bcrn_fast.validation import check_feature_map


class ESAPacks(NamedTuple):
    esa: Any  # ops.esa.ESAWeights: pool taps, folded conv_f∘conv1 and conv4
    pre: Any  # ops.convnext.EsaPrePack: conv2.pw∘conv1 folded (the ConvNeXt epilogue inside a block)
    pre_conv: Any  # the same map as a 1x1 BSConvPack (standalone FusedESA)


def _check_input(module: torch.nn.Module, x: torch.Tensor, weight: torch.Tensor, channels: int, min_size: int) -> None:
    check_feature_map(x, weight, channels, name=f"{type(module).__name__} input", min_size=min_size)
    check_kernel_dtype(x, f"{type(module).__name__} input")


class FusedBSConv(FusedMixin, BSConvU):
    """BSConvU (pointwise 1x1, then depthwise kxk + bias) in one launch (two on Triton for conv2-like shapes).

    ``y = b + Σ_tap dw[tap] ⊙ (pw · x)[p·stride − pad + tap]``. Supports
    kernel sizes 1 and 3, any stride and zero padding, dilation 1, no BN.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        with_bn: bool = False,
        bn_kwargs: dict | None = None,
        *,
        backend: str = "auto",
        precision: str = "ieee",
    ) -> None:
        super().__init__(
            in_channels, out_channels, kernel_size, stride, padding, dilation, bias, padding_mode, with_bn, bn_kwargs
        )
        self._init_fused(backend, precision)
        self._adopt_children()

    def _adopt_children(self) -> None:
        dw = self.dw
        k = dw.kernel_size
        problems = []
        if "bn" in self._modules:
            problems.append("with_bn=True")
        if dw.dilation != (1, 1):
            problems.append(f"dilation={dw.dilation}")
        if dw.padding_mode != "zeros":
            problems.append(f"padding_mode={dw.padding_mode!r}")
        if k[0] != k[1] or k[0] not in (1, 3) or dw.stride[0] != dw.stride[1] or dw.padding[0] != dw.padding[1]:
            problems.append(f"kernel {k}, stride {dw.stride}, padding {dw.padding} (need square k in (1, 3))")
        if problems:
            raise ValueError(
                "FusedBSConv supports BSConvU with square kernel 1 or 3, zero padding, dilation 1 and "
                "no batch norm; got " + ", ".join(problems)
            )

    @property
    def min_size(self) -> int:
        return max(1, self.dw.kernel_size[0] - 2 * self.dw.padding[0])

    def _pack(self, dtype: torch.dtype) -> Any:
        return bsconv_op.pack_bsconv(self, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(self, x, self.pw.weight, self.pw.in_channels, self.min_size)
        if self._needs_grad(x):
            return BSConvU.forward(self, x)
        return self.run(x)

    def run(
        self,
        x: torch.Tensor,
        in_scale: torch.Tensor | None = None,
        residual: torch.Tensor | None = None,
        act: int = ACT_NONE,
    ) -> torch.Tensor:
        """The fused op without input checks (for the fused containers)."""
        return bsconv_op.bsconv_packed(
            x,
            self._packed(x.dtype),
            in_scale=in_scale,
            residual=residual,
            act=act,
            precision=self.precision,
            backend=self._backend_for(x),
        )


class FusedConvNeXtBlock(FusedMixin, ConvNeXtBlock):
    """``x + W2·GELU(W1·dw3x3(x) + b1) + b2`` in one launch, hidden tile kept on chip."""

    def __init__(
        self, channels: int = 64, expansion: int = 4, *, backend: str = "auto", precision: str = "ieee"
    ) -> None:
        super().__init__(channels, expansion)
        self._init_fused(backend, precision)

    def _pack(self, dtype: torch.dtype) -> Any:
        return convnext_op.pack_convnext(self, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(self, x, self.c1_d_3.weight, self.c1_d_3.in_channels, 1)
        if self._needs_grad(x):
            return ConvNeXtBlock.forward(self, x)
        y, _ = self.run(x)
        return y

    def run(self, x: torch.Tensor, esa_pre: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
        return convnext_op.convnext_packed(
            x, self._packed(x.dtype), esa=esa_pre, precision=self.precision, backend=self._backend_for(x)
        )


class FusedCCA(FusedMixin, CCALayer):
    """Contrast-aware channel attention: one launch for mean/std + MLP + sigmoid, one for the scale."""

    def __init__(
        self, channels: int = 64, reduction: int = 16, *, backend: str = "auto", precision: str = "ieee"
    ) -> None:
        super().__init__(channels, reduction)
        self._init_fused(backend, precision)

    def _pack(self, dtype: torch.dtype) -> Any:
        return cca_op.pack_cca(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(self, x, self.conv_du[0].pw.weight, self.conv_du[0].pw.in_channels, 1)
        if self._needs_grad(x):
            return CCALayer.forward(self, x)
        backend = self._backend_for(x)
        s = cca_op.cca_scale(x, self._packed(x.dtype), backend=backend)
        return cca_op.channel_scale(x, s, backend=backend)


class FusedESA(FusedMixin, ESA):
    """Enhanced spatial attention in 4 launches (3 inside a fused block).

    pre-map ``a = pw2·conv1(x)`` (1 launch, or the ConvNeXt epilogue in a block),
    stride-2 depthwise + 7/3 max-pool (1), the three BSConv 3x3 on the H/6 map
    (1: ``esa_low``, their weights packed from the ``conv_max``/``conv3``/``conv3_``
    children), and the apply kernel: bilinear upsample gathered on the fly, folded
    ``conv_f∘conv1`` and ``conv4``, sigmoid and multiply (1).
    """

    def __init__(self, channels: int = 64, *, backend: str = "auto", precision: str = "ieee") -> None:
        super().__init__(channels)
        self._init_fused(backend, precision)

    def _pack(self, dtype: torch.dtype) -> ESAPacks:
        pre = convnext_op.pack_esa_pre(self, dtype)
        taps = torch.ones((1, pre.a_w.shape[1]), dtype=torch.float32, device=pre.a_w.device)
        pre_conv = bsconv_op.BSConvPack(pw_t=pre.a_w, dw=taps, bias=pre.a_b, ksize=1, stride=1, padding=0)
        return ESAPacks(esa_op.pack_esa(self, dtype), pre, pre_conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(self, x, self.conv1.pw.weight, self.conv1.pw.in_channels, MIN_SIZE)
        if self._needs_grad(x):
            return ESA.forward(self, x)
        pre_conv = self._packed(x.dtype).pre_conv
        a = bsconv_op.bsconv_packed(x, pre_conv, precision=self.precision, backend=self._backend_for(x))
        out = empty_nhwc(x.shape[0], x.shape[1], x.shape[2], x.shape[3], x.dtype, x.device)
        self.run(x, a, out, 0)
        return out

    def low(self, v: torch.Tensor) -> torch.Tensor:
        """The low-resolution branch ``conv3_(relu(conv3(relu(conv_max(v)))))`` of the pooled map, one launch."""
        return esa_op.esa_low(v, self._packed(v.dtype).esa, precision=self.precision, backend=self._backend_for(v))

    def run(
        self,
        t: torch.Tensor,
        a: torch.Tensor,
        out: torch.Tensor,
        offset: int,
        cca: Any = None,
        scale: torch.Tensor | None = None,
        workspace: Any = None,
    ) -> torch.Tensor:
        """ESA from the pre-map ``a``; writes ``t ⊙ m`` into ``out[:, offset:offset+C]``.

        With ``cca`` (packed CCA weights) writes the CCA scale ``s [N, C]`` into ``scale`` (fresh when None)
        and returns it, merging in ``workspace`` (``ops.esa.apply_workspaces``; fresh when None).
        """
        backend = self._backend_for(t)
        pack = self._packed(t.dtype).esa
        v = esa_op.esa_pool(a, pack, backend=backend)
        c3 = self.low(v)
        return esa_op.esa_apply(
            t, c3, pack, out, offset, cca=cca, precision=self.precision, backend=backend, scale=scale,
            workspace=workspace,
        )  # fmt: skip


class FusedBCB(FusedMixin, BluePrintShortcutBlock):
    """One BCB ``cca(esa(convNext(conv(x))))`` in 6 launches + a counter fill (5 inside BCRNFused).

    With ``backend="cuda"`` the BSConv and the ConvNeXt block run as one CUDA
    kernel (``bcb_front``), so a block is 5 launches (4 inside BCRNFused); the
    ESA ops, which have no CUDA kernel, run on Triton.
    """

    def __init__(self, channels: int = 64, *, backend: str = "auto", precision: str = "ieee") -> None:
        super().__init__(channels)
        self._init_fused(backend, precision)
        self._adopt_children()

    def _adopt_children(self) -> None:
        swaps = {"conv": FusedBSConv, "convNextBlock": FusedConvNeXtBlock, "esa": FusedESA, "cca": FusedCCA}
        for name, cls in swaps.items():
            child = self._modules[name]
            if not isinstance(child, cls):
                self._modules[name] = cls.from_reference(child, self.backend, self.precision)

    def _pack_params(self) -> Any:
        return ()  # nothing packed here: the children pack their own weights

    def _pack(self, dtype: torch.dtype) -> Any:
        return None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(self, x, self.conv.pw.weight, self.conv.pw.in_channels, MIN_SIZE)
        if self._needs_grad(x):
            return BluePrintShortcutBlock.forward(self, x)
        n, c, h, w = x.shape
        out = empty_nhwc(n, c, h, w, x.dtype, x.device)
        s = self.run(x, None, out, 0)
        return cca_op.channel_scale(out, s, backend=self._backend_for(x))

    def front(self, x: torch.Tensor, in_scale: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(t2, a)``: BSConv then the ConvNeXt block on ``x ⊙ in_scale``, with the ESA pre-map ``a``.

        One op (``bcrn_fast::bcb_front``) on every backend: on ``"cuda"`` one kernel
        keeps t1 on chip, elsewhere the two ops' backends run in turn.
        """
        dt = x.dtype
        return bcb_front_op.bcb_front_packed(
            x,
            self.conv._packed(dt),
            self.convNextBlock._packed(dt),
            self.esa._packed(dt).pre,
            in_scale,
            precision=self.precision,
            backend=self._backend_for(x),
        )

    def run(
        self,
        x: torch.Tensor,
        in_scale: torch.Tensor | None,
        out: torch.Tensor,
        offset: int,
        scale: torch.Tensor | None = None,
        workspace: Any = None,
    ) -> torch.Tensor:
        """Block on ``x ⊙ in_scale``; writes the pre-CCA map ``u`` into ``out[:, offset:]`` and its CCA scale
        ``s`` into ``scale`` (fresh when None), which it returns; ``workspace``: see :meth:`FusedESA.run`."""
        t2, a = self.front(x, in_scale)
        cca = self.cca._packed(x.dtype)
        return self.esa.run(t2, a, out, offset, cca=cca, scale=scale, workspace=workspace)
