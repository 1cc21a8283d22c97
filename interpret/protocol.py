"""Named evaluation protocols: the insertion/deletion settings of a published evaluation code.

Both protocols share the mechanics (pixels ranked by saliency, most salient first, ties in the order
numpy's default ``argsort`` leaves them, reversed; deletion to 0 in the normalised tensor; insertion
from a blurred copy; trapezoidal AUC) and differ in the blur and the pace:

- ``ca-stream`` (the default), as the CA-Stream authors' evaluation computes it: the blur kernel is
  ``gkern(5, 5)`` (a 5 x 5 box to within 3e-6) and each step changes 8 rows of pixels (``imsize * 8``:
  1,792 pixels and 28 steps at 224 px, 896 pixels and 14 steps at 112 px).
- ``rise``, as RISE's evaluation notebook computes it: ``gkern(11, 5)`` (nearly an 11 x 11 box) and a
  step fixed at 224 * 8 = 1,792 pixels whatever the image size (so 7 steps at 112 px, 28 at 224 px).

``gkern(klen, sigma)`` is scipy.ndimage's ``gaussian_filter`` of a single point on a klen x klen grid
(see :func:`interpret.metrics.point_blur_kernel`). Both codes upsample Score-CAM's channel masks with
``align_corners=True`` (``UpsamplingBilinear2d``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

TIE_ORDER = "numpy argsort (default kind) of the float32 saliency, reversed"


@dataclass(frozen=True)
class Protocol:
    """Insertion/deletion and Score-CAM settings of one published evaluation.

    Exactly one of ``rows_per_step`` (the pace scales with the image: that many rows of pixels per
    step) and ``pixels_per_step_fixed`` (the same number of pixels at every size) is set.
    """

    name: str
    blur_kernel: int
    blur_sigma: float
    rows_per_step: int | None = None
    pixels_per_step_fixed: int | None = None
    scorecam_align_corners: bool = True
    source: str = ""

    def __post_init__(self) -> None:
        if (self.rows_per_step is None) == (self.pixels_per_step_fixed is None):
            raise ValueError(f"protocol {self.name!r}: set exactly one of rows_per_step and pixels_per_step_fixed")

    def pixels_per_step(self, height: int, width: int) -> int:
        """Pixels changed per insertion/deletion step on ``height`` x ``width`` images."""
        if self.rows_per_step is not None:
            return self.rows_per_step * width
        assert self.pixels_per_step_fixed is not None
        return self.pixels_per_step_fixed

    def pace(self) -> str:
        """The pace in words."""
        if self.rows_per_step is not None:
            return f"{self.rows_per_step} rows per step, imsize * {self.rows_per_step} pixels"
        return f"{self.pixels_per_step_fixed} pixels per step at every image size"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "blur_kernel": self.blur_kernel,
            "blur_sigma": self.blur_sigma,
            "pace": self.pace(),
            "tie_order": TIE_ORDER,
            "scorecam_align_corners": self.scorecam_align_corners,
            "source": self.source,
        }


PROTOCOLS: dict[str, Protocol] = {
    "ca-stream": Protocol(
        "ca-stream",
        blur_kernel=5,
        blur_sigma=5.0,
        rows_per_step=8,
        source="the CA-Stream authors' evaluation (engine/evaluation.py, engine/interpretable/ins_del.py)",
    ),
    "rise": Protocol(
        "rise",
        blur_kernel=11,
        blur_sigma=5.0,
        pixels_per_step_fixed=224 * 8,
        source="RISE's evaluation notebook (evaluation.py, Evaluation.ipynb)",
    ),
}
DEFAULT = "ca-stream"


def get(name: str) -> Protocol:
    """The protocol called ``name``."""
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise ValueError(f"unknown protocol {name!r}; expected one of {sorted(PROTOCOLS)}") from None
