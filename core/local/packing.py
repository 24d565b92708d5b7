"""Linear layers with their weights reordered once for oneDNN, for bf16 on a CPU with bf16 matrix units.

Why: on a CPU with bf16 instructions (AVX512-BF16, AMX-BF16), torch runs a bf16 ``linear`` as a oneDNN
matmul on the weight in PyTorch's own layout (``ONEDNN_VERBOSE=1`` shows ``wei:bf16::blocked:ba``), and
the kernel copies it into its blocked layout inside every call: a pass over the whole weight per call,
whatever the number of tokens. Reordered once (``AB16b32a2b``), the weight goes straight to the kernel.
Measured on a 2-core Xeon with AMX, one thread: a 768×2816 bf16 linear takes 1.7-1.9 ms for
190-280 tokens, and 1.1-1.3 ms with its weight reordered once beforehand; a whole 155M-parameter model
scores 1.1-1.3× faster. The reordered weight gives bit-identical outputs: only its layout changes.

The ops are the ones PyTorch's own compiler uses for the same purpose on the CPU
(``torch.ops.mkldnn._reorder_linear_weight`` and ``_linear_pointwise``). They are not public API, so
:func:`pack_linear_weights` first checks, on a small layer, that they exist and agree with
``torch.nn.functional.linear``, and leaves the model as it is otherwise.
"""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)


class PackedLinear(torch.nn.Module):
    """A bias-optional ``nn.Linear`` whose weight oneDNN reordered once, for bf16 inference on the CPU.

    Inference only: the weight is a oneDNN tensor, not a parameter, and takes no gradient.

    Args:
        linear: The layer to replace; its weight is reordered (a copy) and its bias kept.
    """

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        self.packed_weight = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), None)
        self.bias = None if linear.bias is None else linear.bias.detach()

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """``hidden @ weight.T + bias``, as ``nn.Linear`` computes it."""
        # Made contiguous, the output equals torch's linear on the same (contiguous) input bit for bit;
        # a strided one goes through other kernels in both, which round differently (one bf16 ulp).
        # The model's inputs are contiguous already, so this costs nothing there.
        output: torch.Tensor = torch.ops.mkldnn._linear_pointwise(
            hidden.contiguous(), self.packed_weight, self.bias, "none", [], ""
        )
        return output

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def packing_applies(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether reordered weights pay here: bf16 on a CPU whose oneDNN has bf16 kernels."""
    if device.type != "cpu" or dtype is not torch.bfloat16:
        return False
    if not torch.backends.mkldnn.is_available():  # type: ignore[no-untyped-call]
        return False
    supported = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    try:
        return bool(supported()) if supported is not None else False
    except RuntimeError:
        return False


def _ops_work() -> bool:
    """Whether this torch has the two oneDNN ops and they agree with ``F.linear`` on a small layer."""
    generator = torch.Generator().manual_seed(0)
    linear = torch.nn.Linear(64, 48).to(torch.bfloat16)
    hidden = torch.randn(2, 5, 64, generator=generator).to(torch.bfloat16)
    try:
        with torch.inference_mode():
            packed = PackedLinear(linear)(hidden)
            plain = torch.nn.functional.linear(hidden, linear.weight, linear.bias)
    except (AttributeError, RuntimeError) as error:
        logger.info("bf16 linear weights left unpacked: oneDNN's ops are not usable here (%s)", error)
        return False
    if packed.shape != plain.shape or not torch.allclose(packed.float(), plain.float(), rtol=1e-2, atol=1e-2):
        logger.info("bf16 linear weights left unpacked: oneDNN's packed linear disagrees with torch's")
        return False
    return True


def pack_linear_weights(module: torch.nn.Module) -> int:
    """Replaces every bf16 ``nn.Linear`` inside ``module`` with a :class:`PackedLinear`, in place.

    Call it only where :func:`packing_applies`. Each original weight is released once its copy is made.
    Returns how many layers were replaced: 0 when this torch's oneDNN ops are missing or disagree with
    ``F.linear``, and then ``module`` is unchanged.
    """
    if not _ops_work():
        return 0
    # (parent, name) pairs, not the layers themselves: each old layer is freed as soon as it is replaced,
    # so packing never holds more than one layer's weight twice (a 7B model's are 15 GB in bf16).
    targets = [
        (parent, name)
        for parent in module.modules()
        for name, child in parent.named_children()
        if type(child) is torch.nn.Linear and child.weight.dtype is torch.bfloat16
    ]
    for parent, name in targets:
        setattr(parent, name, PackedLinear(getattr(parent, name)))
    return len(targets)
