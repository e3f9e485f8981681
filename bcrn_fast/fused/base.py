"""What every fused module shares: backend choice, precision, packed-weight cache.

A fused module *is* its reference module (it subclasses it, so parameter names,
shapes and state-dict keys are identical) with a forward that runs the fused
operators of :mod:`bcrn_fast.ops` on weights packed once per weight version.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any, TypeVar

import torch
from torch import nn

from bcrn_fast.ops._common import check_precision
from bcrn_fast.ops.backends import BACKENDS, resolve_backend

M = TypeVar("M", bound="FusedMixin")


def _version(p: torch.Tensor) -> int:
    """In-place update counter of ``p``; inference tensors (made under
    ``torch.inference_mode``) keep none, so an in-place edit of such a weight
    is not seen — rebuild the module or call ``clear_packed()`` after one."""
    return -1 if p.is_inference() else p._version


class FusedMixin:
    """Mixin for a reference ``nn.Module`` subclass whose forward runs fused ops.

    Gradients: the fused kernels are inference-only. When autograd needs a
    graph (grad mode on and the input or any parameter requires grad) the
    module runs the reference forward of the class it subclasses, which gives
    exact gradients, and warns once that the fused path was skipped. It never
    returns a result without a graph when one is needed.
    """

    backend: str
    precision: str
    _pack_cache: dict[Any, Any]
    _warned_grad: bool

    def _init_fused(self, backend: str = "auto", precision: str = "ieee") -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.backend = backend
        self.precision = check_precision(precision)
        self._pack_cache = {}
        self._warned_grad = False

    @classmethod
    def reference_class(cls) -> type[nn.Module]:
        """The reference module class this fused class replaces (its first nn.Module base)."""
        return next(c for c in cls.__mro__[1:] if not issubclass(c, FusedMixin) and issubclass(c, nn.Module))

    @classmethod
    def from_reference(cls: type[M], module: nn.Module, backend: str = "auto", precision: str = "ieee") -> M:
        """A fused module that shares ``module``'s parameters (no copy).

        ``module`` must be an instance of the reference class this fused class
        subclasses; changes to the shared parameters are seen by both.
        """
        ref_cls = cls.reference_class()
        if not isinstance(module, ref_cls):
            raise TypeError(f"{cls.__name__}.from_reference expects a {ref_cls.__name__}, got {type(module).__name__}")
        fused = copy.copy(module)  # shallow: shares parameters, buffers and children
        for attr in ("_parameters", "_buffers", "_modules"):
            object.__setattr__(fused, attr, dict(getattr(module, attr)))
        fused.__class__ = cls
        fused._init_fused(backend, precision)
        fused._adopt_children()
        return fused

    def _adopt_children(self) -> None:
        """Swap reference children for their fused counterparts (overridden by containers)."""

    def set_backend(self: M, backend: str, precision: str | None = None) -> M:
        """Switch backend (and optionally precision) here and in every fused child."""
        for m in self.modules():  # type: ignore[attr-defined]
            if isinstance(m, FusedMixin):
                m._init_fused(backend, precision or m.precision)
        return self

    # -- dispatch -----------------------------------------------------------------
    def _backend_for(self, x: torch.Tensor) -> str:
        return resolve_backend(self.backend, x.device)

    def _needs_grad(self, x: torch.Tensor) -> bool:
        if not torch.is_grad_enabled():
            return False
        if x.requires_grad or any(p.requires_grad for p in self.parameters()):  # type: ignore[attr-defined]
            if not self._warned_grad and not torch.compiler.is_compiling():
                warnings.warn(
                    f"{type(self).__name__}: autograd needs gradients here, so the differentiable reference "
                    "forward runs instead of the fused kernels. For inference wrap the call in "
                    "torch.inference_mode() or call .requires_grad_(False).",
                    stacklevel=3,
                )
                self._warned_grad = True
            return True
        return False

    # -- packed weights -----------------------------------------------------------
    def _pack_params(self) -> Any:
        """The parameters :meth:`_pack` reads (the cache key); containers narrow it to what they pack."""
        return self.parameters()  # type: ignore[attr-defined]

    def _packed(self, dtype: torch.dtype) -> Any:
        """Packed weights for ``dtype``, rebuilt only when a parameter :meth:`_pack` reads changed."""
        params = self._pack_params()
        if torch.compiler.is_compiling():
            return self._pack(dtype)
        key = (dtype, tuple((id(p), p.data_ptr(), _version(p), p.device) for p in params))
        hit = self._pack_cache.get(dtype)
        if hit is not None and hit[0] == key:
            return hit[1]
        with torch.no_grad():
            packed = self._pack(dtype)
        self._pack_cache[dtype] = (key, packed)
        return packed

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        # .to()/.half()/.cuda() replace parameter storage without bumping the
        # version counter (and a freed address can be reused), so drop the cache.
        self.clear_packed()
        return super()._apply(fn, *args, **kwargs)  # type: ignore[misc]

    def clear_packed(self) -> None:
        """Drop the packed-weight cache of this module and its fused children."""
        for m in self.modules():  # type: ignore[attr-defined]
            if isinstance(m, FusedMixin):
                m.__dict__.get("_pack_cache", {}).clear()

    def _pack(self, dtype: torch.dtype) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def extra_repr(self) -> str:
        base = super().extra_repr()  # type: ignore[misc]
        fused = f"backend={self.backend!r}, precision={self.precision!r}"
        return f"{base}, {fused}" if base else fused
